"""Projector-only alignment on cached features of two frozen encoders.

The encoders ran once per example in tools/cache_features.py; here only two MLP projectors
(and the temperature) train, on `vector` towers with encoder="identity":

  python tools/cache_features.py --workdir=runs/frozen --split=train --out=feats/train.npz
  python tools/cache_features.py --workdir=runs/frozen --split=eval  --out=feats/eval.npz
  xmodal train --config=configs/projector_cached.py:feats --workdir=runs/projectors

ARG is the folder holding train.npz and eval.npz; the towers (one per array other than
"label") and their feature widths are read from train.npz. Hardware: a CPU is enough for
millions of cached rows; steps are a few small matmuls. Expected: retrieval on the cached
eval split close to the frozen encoders' own when they were trained together, and far above
chance when they were not (that gap is what the projectors learn).
"""

import os

import numpy as np

from xmodal import default_config


def get_config(arg=None):
  folder = arg or "feats"
  config = default_config.get_config()
  config.data.source = "features"
  config.data.train_files = os.path.join(folder, "train.npz")
  config.data.eval_files = os.path.join(folder, "eval.npz")
  towers = default_config.ConfigDict()
  widths = {}
  if os.path.exists(config.data.train_files):
    with np.load(config.data.train_files) as f:
      widths = {k: f[k].shape[1] for k in f.files if k != "label"}
  for name, width in (widths or {"image": 96, "text": 96}).items():
    tower = default_config.tower_defaults("vector")
    tower.update(dict(features=int(width), encoder="identity", head="mlp", head_hidden=512))
    towers[name] = tower
  config.towers = towers
  config.model.embed_dim = 128
  config.batch_size = 256
  config.optim.lr = 1e-3
  config.optim.warmup_steps = 50
  config.train.total_steps = 2000
  config.train.log_every = 100
  config.train.eval_every = 500
  config.train.checkpoint_every = 500
  return config
