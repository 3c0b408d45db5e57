"""Synthetic paired data for any towers: every example has a latent class, and each
modality renders it its own way (noisy). Retrieval between two towers is learnable and
above chance only if both towers learn. Used by tests and for smoke runs of new towers.

    batch, labels = paired_batch(config, 32, np.random.default_rng(0))
    # batch: {modality: array in the tower's input format}, labels: int [32]
"""

import numpy as np

from xmodal import towers

WORDS = towers.get("text").WORDS


def _render(cfg, config, labels, rng, num_classes):
  module = towers.get(cfg.kind)
  if not hasattr(module, "synthetic"):
    raise ValueError(f"no synthetic rendering for tower kind {cfg.kind!r} (its module has no "
                     f"synthetic())")
  return module.synthetic(cfg, config, labels, rng, num_classes)


def paired_batch(config, n: int, rng: np.random.Generator, num_classes: int = 4):
  """({modality: [n, ...]}, labels [n]) for every tower in config.towers."""
  labels = rng.integers(0, num_classes, n)
  return {m: _render(towers.with_defaults(t), config, labels, rng, num_classes)
          for m, t in config.towers.items()}, labels


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
