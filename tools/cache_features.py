"""Cache frozen encoders' features once, for projector-only alignment.

Runs each tower's encoder (everything before its head: the pooled [width] features) over
the first N examples of a split, with evaluation preprocessing (no augmentation), and
writes one .npz of {modality: float32 [N, width], "label": int [N]}. A config with `vector`
towers (encoder="identity", head="mlp") then trains only the projectors on these features
(`data.source="features"`), so the frozen encoders run once per example instead of once per
step (see configs/projector_cached.py).

  # encoders from a trained or converted run (its workdir), or from a config (init.source)
  python tools/cache_features.py --workdir=runs/frozen --split=train --max_examples=100000 \\
      --out=feats/train.npz
  python tools/cache_features.py --config=configs/lit_frozen_clip_image.py:weights/clip_b16 \\
      --split=eval --out=feats/eval.npz
"""

import argparse
import importlib.util
import os
import sys
import time

import jax
import numpy as np

from xmodal import config as config_lib, init as init_lib
from xmodal.data import pipeline
from xmodal.models import model as model_lib


def _load_config(spec: str):
  path, _, arg = spec.partition(":")
  module_spec = importlib.util.spec_from_file_location("xmodal_config", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg or None)


def encoder_params_and_config(workdir: str | None, config_spec: str | None):
  """(config, params) from a run's newest checkpoint, or from a config's init (init.source)."""
  if workdir:
    import xmodal
    loaded = xmodal.load(workdir)
    return loaded.config, loaded.params
  config = config_lib.upgrade(_load_config(config_spec))
  init_lib.resolve(config)
  model = model_lib.MultiTower(config)
  params = jax.jit(lambda key: model_lib.unbox(
      model.init(key, model_lib.dummy_inputs(config))["params"]))(jax.random.key(config.seed))
  if config.init.source:
    params = init_lib.load_into(params, config.init.source, config.init.map)
  return config, params


def encode_features(config, params, data: dict, batch_size: int = 256) -> dict:
  """{modality: tower input [N, ...]} -> {modality: float32 [N, width]}: each tower's
  encoder output before its head."""
  out = {}
  for m, cfg in config.towers.items():
    encoder = model_lib.build_tower(cfg, config, "encoder", np.float32)
    fn = jax.jit(lambda p, x, enc=encoder: enc.apply({"params": p}, x))
    chunks = [np.asarray(fn(params[m]["encoder"], data[m][i:i + batch_size]))
              for i in range(0, len(data[m]), batch_size)]
    out[m] = np.concatenate(chunks).astype(np.float32)
  return out


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  src = ap.add_mutually_exclusive_group(required=True)
  src.add_argument("--workdir", help="a run whose newest checkpoint holds the encoders")
  src.add_argument("--config", help="FILE.py[:ARG]; params from init (and init.source)")
  ap.add_argument("--split", choices=("train", "eval"), default="train")
  ap.add_argument("--max_examples", type=int, default=None)
  ap.add_argument("--out", required=True, help="the .npz to write")
  args = ap.parse_args(argv)
  config, params = encoder_params_and_config(args.workdir, args.config)
  t0 = time.time()
  data = pipeline.eval_arrays(config, args.max_examples, split=args.split)
  n = len(data["label"])
  print(f"read {n} examples of {args.split} ({data['skipped']} skipped) in "
        f"{time.time() - t0:.1f}s", flush=True)
  t0 = time.time()
  features = encode_features(config, params, data)
  print(f"encoded {n} examples in {time.time() - t0:.1f}s: "
        + ", ".join(f"{m} {f.shape}" for m, f in features.items()), flush=True)
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  np.savez(args.out, label=data["label"].astype(np.int32), **features)
  print(f"wrote {args.out}", flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
