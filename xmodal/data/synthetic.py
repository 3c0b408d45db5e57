"""Synthetic paired data for any towers: every example has a latent class, and each
modality renders it its own way (noisy). Retrieval between two towers is learnable and
above chance only if both towers learn. Used by tests and for smoke runs of new towers.

    batch, labels = paired_batch(config, 32, np.random.default_rng(0))
    # batch: {modality: array in the tower's input format}, labels: int [32]
"""

import numpy as np

from xmodal.data import audio as audio_lib
from xmodal.data import tokenizer as tokenizer_lib

WORDS = ("amber", "basalt", "cobalt", "dune", "ember", "fjord", "garnet", "heron")


def _render(kind, cfg, config, labels, rng, num_classes):
  n = len(labels)
  proto = np.random.default_rng(1234)      # fixed per-class prototypes
  if kind == "text":
    tok = tokenizer_lib.get_tokenizer(config)
    return tok.encode_batch([f"a {WORDS[c % len(WORDS)]} thing {c}" for c in labels])
  if kind in ("vit", "video"):
    s = config.data.image_size
    colors = proto.uniform(0, 255, (num_classes, 3))
    if kind == "vit":
      img = colors[labels][:, None, None, :] + rng.normal(0, 40, (n, s, s, 3))
      return np.clip(img, 0, 255).astype(np.uint8)
    f = cfg.frames
    vid = rng.normal(60, 20, (n, f, s, s, 3))
    side = max(s // 4, 2)
    for i, c in enumerate(labels):
      dy, dx = [(0, 1), (1, 0), (0, -1), (-1, 0)][c % 4]
      y0, x0 = s // 2 - side // 2, s // 2 - side // 2
      for t in range(f):
        y = int(np.clip(y0 + dy * t * side // 2, 0, s - side))
        x = int(np.clip(x0 + dx * t * side // 2, 0, s - side))
        vid[i, t, y:y + side, x:x + side] = colors[c]
    return np.clip(vid, 0, 255).astype(np.uint8)
  if kind == "audio":
    sr = cfg.sample_rate
    t = np.arange(audio_lib.num_samples(cfg.frames, cfg.n_fft, cfg.hop)) / sr
    freqs = 300.0 * 1.6 ** (labels % num_classes)
    wave = np.sin(2 * np.pi * freqs[:, None] * t) + rng.normal(0, 0.3, (n, len(t)))
    return audio_lib.log_mel_spectrogram(wave, sr, cfg.n_fft, cfg.hop, cfg.n_mels, cfg.frames)
  if kind == "volume":
    s, d = cfg.size, cfg.slices
    centres = proto.uniform(0.2, 0.8, (num_classes, 3))
    z, y, x = np.meshgrid(np.linspace(0, 1, d), np.linspace(0, 1, s), np.linspace(0, 1, s),
                          indexing="ij")
    c = centres[labels]
    blob = np.exp(-((z - c[:, 0, None, None, None]) ** 2 + (y - c[:, 1, None, None, None]) ** 2
                    + (x - c[:, 2, None, None, None]) ** 2) / 0.02)
    return (blob + rng.normal(0, 0.1, blob.shape)).astype(np.float32)
  if kind == "vector":
    width = cfg.features
    protos = proto.normal(0, 1, (num_classes, width))
    return (protos[labels] + rng.normal(0, 0.5, (n, width))).astype(np.float32)
  if kind == "signal":
    t = np.arange(cfg.length) / cfg.length
    freqs = 2.0 + 3.0 * (labels % num_classes)
    phase = proto.uniform(0, np.pi, cfg.channels)
    sig = np.sin(2 * np.pi * freqs[:, None, None] * t[None, :, None] + phase)
    return (sig + rng.normal(0, 0.3, sig.shape)).astype(np.float32)
  raise ValueError(f"no synthetic rendering for tower kind {kind!r}")


def paired_batch(config, n: int, rng: np.random.Generator, num_classes: int = 4):
  """({modality: [n, ...]}, labels [n]) for every tower in config.towers that reads its
  own input (not the teachers that read another's: towers.<name>.input)."""
  labels = rng.integers(0, num_classes, n)
  return {m: _render(t.kind, t, config, labels, rng, num_classes)
          for m, t in config.towers.items() if not t.get("input")}, labels


class SyntheticSource:
  """A grain source of synthetic pairs: record i -> {modality: one tower-ready example,
  "label": latent class}, drawn from (split, i) alone. Used by `data.source="synthetic"`
  to train any towers end to end with `xmodal train`."""

  _SPLIT_SEEDS = {"train": 10, "eval": 11}

  def __init__(self, config, split: str, size: int, num_classes: int):
    self.config, self.split, self.size, self.num_classes = config, split, size, num_classes

  def __len__(self) -> int:
    return self.size

  def __getitem__(self, index: int) -> dict:
    rng = np.random.default_rng((self._SPLIT_SEEDS[self.split], index))
    batch, labels = paired_batch(self.config, 1, rng, self.num_classes)
    record = {m: x[0] for m, x in batch.items()}
    record["label"] = np.int32(labels[0])
    return record

  def __repr__(self):
    return (f"SyntheticSource({self.split!r}, {self.size} pairs, {self.num_classes} classes, "
            f"towers {list(self.config.towers)})")
