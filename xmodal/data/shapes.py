"""The embedded default dataset: procedurally drawn shapes with compositional captions.

Each example is a coloured shape (5 shapes x 6 colours) of one of 2 sizes at one of 9
positions on a noisy dark background, with the caption "a small red circle at the top
left." (540 distinct captions). Position, size and colour are jittered, so no two images
are equal. Examples are drawn from the index alone, so the dataset needs no files and any
index is reproducible.

Splits: "train" draws attributes at random per index; "eval" is held out (its own seed) and
walks a fixed permutation of the 540 attribute combinations, so the first 540 eval
examples have distinct captions (retrieval has one right answer). Zero-shot classes are
the 30 "colour shape" names.
"""

import numpy as np

SHAPES = ("circle", "square", "triangle", "diamond", "cross")
COLOURS = {
    "red": (220, 40, 40), "green": (40, 190, 60), "blue": (50, 80, 230),
    "yellow": (230, 210, 40), "purple": (160, 60, 200), "cyan": (40, 200, 210),
}
SIZES = ("small", "large")
POSITIONS = (("top left", 0, 0), ("top", 0, 1), ("top right", 0, 2),
             ("left", 1, 0), ("center", 1, 1), ("right", 1, 2),
             ("bottom left", 2, 0), ("bottom", 2, 1), ("bottom right", 2, 2))
CLASSNAMES = tuple(f"{c} {s}" for c in COLOURS for s in SHAPES)
NUM_COMBINATIONS = len(SHAPES) * len(COLOURS) * len(SIZES) * len(POSITIONS)
_SPLIT_SEEDS = {"train": 0, "eval": 1}


def caption(thing: str, size: str, position: str) -> str:
  """caption("red circle", "small", "top left") -> "a small red circle at the top left."."""
  where = {"center": "in the center", "left": "on the left", "right": "on the right"}.get(
      position, f"at the {position}")
  return f"a {size} {thing} {where}."


def prompt_templates() -> tuple[str, ...]:
  """Zero-shot prompts shaped like the captions: every size x position, "{}" = class name."""
  return tuple(caption("{}", size, position) for size in SIZES for position, _, _ in POSITIONS)


def _mask(shape: str, dx, dy, r):
  if shape == "circle":
    return dx * dx + dy * dy <= r * r
  if shape == "square":
    return np.maximum(np.abs(dx), np.abs(dy)) <= 0.85 * r
  if shape == "diamond":
    return np.abs(dx) + np.abs(dy) <= 1.15 * r
  if shape == "triangle":
    return (dy <= 0.8 * r) & (np.abs(dx) <= 0.6 * (dy + r))
  arm = r / 3
  return ((np.abs(dx) <= arm) & (np.abs(dy) <= r)) | ((np.abs(dy) <= arm) & (np.abs(dx) <= r))


def render(shape, colour, size, row, col, image_size, rng) -> np.ndarray:
  """Draws one example: uint8 [image_size, image_size, 3]."""
  s = image_size
  background = rng.uniform(0, 60)
  img = background + rng.normal(0, 8, (s, s, 3))
  centre = np.array([0.22, 0.5, 0.78]) * s
  cy = centre[row] + rng.uniform(-0.04, 0.04) * s
  cx = centre[col] + rng.uniform(-0.04, 0.04) * s
  r = (rng.uniform(0.09, 0.12) if size == "small" else rng.uniform(0.17, 0.21)) * s
  yy, xx = np.mgrid[0:s, 0:s].astype(np.float32) + 0.5
  mask = _mask(shape, xx - cx, yy - cy, r)
  rgb = np.clip(np.array(COLOURS[colour]) + rng.normal(0, 12, 3), 0, 255)
  img[mask] = rgb
  return np.clip(img, 0, 255).astype(np.uint8)


class ShapesSource:
  """A grain random-access source: record i -> {"image": uint8 [S,S,3], "caption", "label"}."""

  def __init__(self, split: str, size: int, image_size: int):
    if split not in _SPLIT_SEEDS:
      raise ValueError(f"shapes split must be one of {sorted(_SPLIT_SEEDS)}, got {split!r}")
    self.split, self.size, self.image_size = split, size, image_size
    self._permutation = np.random.default_rng(1234).permutation(NUM_COMBINATIONS)

  def __len__(self) -> int:
    return self.size

  def _attributes(self, index: int, rng):
    if self.split == "eval":
      combo = int(self._permutation[index % NUM_COMBINATIONS])
    else:
      combo = int(rng.integers(NUM_COMBINATIONS))
    combo, shape = divmod(combo, len(SHAPES))
    combo, colour = divmod(combo, len(COLOURS))
    position, size = divmod(combo, len(SIZES))
    return shape, colour, size, position

  def __getitem__(self, index: int) -> dict:
    if not 0 <= index < self.size:
      raise IndexError(f"shapes index {index} out of range [0, {self.size})")
    rng = np.random.default_rng((_SPLIT_SEEDS[self.split], index))
    shape_i, colour_i, size_i, position_i = self._attributes(index, rng)
    shape, colour, size = SHAPES[shape_i], list(COLOURS)[colour_i], SIZES[size_i]
    position, row, col = POSITIONS[position_i]
    return {
        "image": render(shape, colour, size, row, col, self.image_size, rng),
        "caption": caption(f"{colour} {shape}", size, position),
        "label": colour_i * len(SHAPES) + shape_i,
    }

  def __repr__(self):
    return f"ShapesSource(split={self.split!r}, size={self.size}, image_size={self.image_size})"
