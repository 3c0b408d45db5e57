"""Trains any tower config on synthetic paired data (xmodal/data/synthetic.py) with the
real train step, single process: a smoke run for towers that have no dataset reader yet
(audio, video, volume, vectors, signals).

    python tools/train_synthetic.py --config configs/audio_text.py --steps 200

Prints the loss every --log steps and, at the end, class-level retrieval accuracy between
the first two towers on held-out pairs (chance = 1 / --classes).
"""

import argparse
import importlib.util
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from xmodal import config as config_lib, losses, optim, train  # noqa: E402
from xmodal.data import synthetic  # noqa: E402
from xmodal.models import model as model_lib  # noqa: E402


def load_config(spec: str):
  path, _, arg = spec.partition(":")
  module_spec = importlib.util.spec_from_file_location("xmodal_config", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg or None)


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--config", required=True)
  ap.add_argument("--steps", type=int, default=0, help="0 = config.train.total_steps")
  ap.add_argument("--batch", type=int, default=0, help="0 = config.batch_size")
  ap.add_argument("--classes", type=int, default=8)
  ap.add_argument("--log", type=int, default=25)
  args = ap.parse_args(argv)
  config = load_config(args.config)
  config.data.source = "synthetic"
  config.loss.impl = "dense"
  config.mesh.data = 1
  if args.steps:
    config.train.total_steps = args.steps
  batch_size = args.batch or config.batch_size
  config.batch_size = batch_size
  config_lib.validate(config, 1)
  model = model_lib.MultiTower(config)
  tx = optim.make_optimizer(config)
  state = jax.jit(train.init_state_fn(model, tx, config))(jax.random.key(config.seed))
  step = jax.jit(train.make_train_step(model, tx, losses.make_objective(config, None),
                                       optim.schedule(config), seed=config.seed))
  rng = np.random.default_rng(config.seed)
  for i in range(config.train.total_steps):
    batch, _ = synthetic.paired_batch(config, batch_size, rng, args.classes)
    state, metrics = step(state, batch)
    if (i + 1) % args.log == 0 or i == 0:
      print(f"step {i + 1}: loss {float(metrics['loss']):.4f}", flush=True)
  a, b = list(config.towers)[:2]
  batch, labels = synthetic.paired_batch(config, 256, np.random.default_rng(12345), args.classes)
  z = jax.jit(model.apply)({"params": state["params"]}, batch)
  nearest = np.argmax(np.asarray(z[a]) @ np.asarray(z[b]).T, axis=1)
  acc = float(np.mean(labels[nearest] == labels))
  print(f"{a}->{b} class retrieval accuracy {acc:.3f} (chance {1 / args.classes:.3f})")
  return acc


if __name__ == "__main__":
  main()
