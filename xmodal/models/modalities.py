"""Towers for modalities other than images and text (filled in below)."""

TOWERS = {}


def build(cfg, config, name, dtype):
  return TOWERS[cfg.kind](cfg, config, name, dtype)


def dummy_input(cfg, config, batch):
  raise ValueError(f"no dummy input for tower kind {cfg.kind!r}")
