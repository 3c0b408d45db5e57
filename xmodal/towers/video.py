"""Kind "video": uint8 frames [B, frames, S, S, 3] (S = data.image_size) -> every frame
through a ViT (shared weights) -> "mean" over time or "attention" (a temporal
transformer); models/modalities.py VideoTower.

Record values: encoded video files (mp4/webm/mkv/avi/mov, decoder "video", extra `video`),
a list of encoded frames (webdataset members KEY.0.jpg, KEY.1.jpg... gathered as the field
"frames"; decoder "frames") or a uint8 array [T, H, W, 3]. Preparation samples `frames`
frames: split the clip into `frames` equal segments and take each segment's centre
(evaluation) or a random frame of each segment (training; TSN-style); clips shorter than
`frames` repeat frames. Each frame is resized (shorter side to S, area filter) and
centre-cropped.
"""

import dataclasses

import numpy as np

from xmodal.fields import Field
from xmodal.towers import _common, _transformer

EXTENSIONS = ("mp4", "m4v", "webm", "mkv", "avi", "mov", "frames")
DECODE = True

FIELDS = dict(
    **_common.transformer_fields(),
    frames=Field(4, "frames per clip", gt=0),
    patch_size=Field(8, "pixels per patch side", gt=0),
    temporal=Field("mean", "over frames: 'mean' or 'attention' (a temporal transformer)",
                   choices=("mean", "attention")),
    temporal_depth=Field(1, "blocks of the temporal transformer", gt=0),
    **_common.input_fields(),
)


def build(cfg, config, dtype, name):
  return _transformer.build("VideoTower", cfg, dtype, name)


def input_spec(cfg, config):
  s = config.data.image_size
  return (cfg.frames, s, s, 3), np.dtype(np.uint8)


def sample_indices(total: int, count: int, train: bool, rng) -> np.ndarray:
  """`count` frame indices of a `total`-frame clip: one per equal segment, its centre
  (eval) or uniformly random within it (train). int [count], non-decreasing."""
  edges = np.linspace(0, total, count + 1)
  if train:
    pos = edges[:-1] + rng.random(count) * (edges[1:] - edges[:-1])
  else:
    pos = (edges[:-1] + edges[1:]) / 2
  return np.minimum(np.floor(pos).astype(np.int64), total - 1)


def fit(frame: np.ndarray, size: int) -> np.ndarray:
  """uint8 [H, W, 3] -> [size, size, 3]: shorter side to `size`, centre crop."""
  import cv2   # noqa: PLC0415
  h, w = frame.shape[:2]
  scale = size / min(h, w)
  nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
  interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
  resized = cv2.resize(frame, (nw, nh), interpolation=interp)
  y0, x0 = (nh - size) // 2, (nw - size) // 2
  return resized[y0:y0 + size, x0:x0 + size]


@dataclasses.dataclass(frozen=True)
class Prepare:
  """A decoded clip (anything with num_frames and frames(indices)) -> uint8 [F, S, S, 3]."""
  frames: int
  size: int

  def __call__(self, clip, train: bool, rng) -> np.ndarray:
    from xmodal.data import bad   # noqa: PLC0415
    from xmodal.data.decoders import frames as frames_lib   # noqa: PLC0415
    if isinstance(clip, np.ndarray):
      if clip.ndim != 4 or clip.shape[-1] != 3:
        raise bad.BadData("wrong_shape", f"frames of shape {clip.shape}; expected [T, H, W, 3]")
      clip = frames_lib.ArrayFrames(clip)
    if clip.num_frames == 0:
      raise bad.BadData("empty", "no frames")
    pixels = clip.frames(sample_indices(clip.num_frames, self.frames, train, rng))
    if pixels.ndim == 3:                          # grey frames
      pixels = np.repeat(pixels[..., None], 3, axis=-1)
    return np.stack([fit(np.ascontiguousarray(f[..., :3]), self.size) for f in pixels])


def preparer(cfg, config) -> Prepare:
  return Prepare(cfg.frames, config.data.image_size)


def synthetic(cfg, config, labels, rng, num_classes):
  """A square of the class colour moving in the class's direction: uint8 [n, F, S, S, 3]."""
  s, f = config.data.image_size, cfg.frames
  colors = np.random.default_rng(1234).uniform(0, 255, (num_classes, 3))
  vid = rng.normal(60, 20, (len(labels), f, s, s, 3))
  side = max(s // 4, 2)
  for i, c in enumerate(labels):
    dy, dx = [(0, 1), (1, 0), (0, -1), (-1, 0)][c % 4]
    y0, x0 = s // 2 - side // 2, s // 2 - side // 2
    for t in range(f):
      y = int(np.clip(y0 + dy * t * side // 2, 0, s - side))
      x = int(np.clip(x0 + dx * t * side // 2, 0, s - side))
      vid[i, t, y:y + side, x:x + side] = colors[c]
  return np.clip(vid, 0, 255).astype(np.uint8)
