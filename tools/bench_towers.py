"""Benchmark: compile time with and without `scan`, and the train step's FLOPs from XLA's
cost analysis against the analytic count, for a ViT-B/16 image tower + 12-layer text tower
(CLIP ViT-B/16 sizes: text width 512, 8 heads, 77 tokens, 49408-token vocabulary).

    python tools/bench_towers.py [--batch 8] [--out docs/benchmarks/towers.md]

Nothing is executed: shapes are abstract, the step is lowered and compiled only. XLA counts
a scanned loop body once, so FLOPs are read from the unrolled (scan=False) compile.
Analytic FLOPs: 6 x (matmul params of each tower) x (its tokens) for forward + backward,
plus attention's two L x L matmuls: 12 x depth x L^2 x width per example.
"""

import argparse
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from xmodal import default_config, losses, optim, train  # noqa: E402
from xmodal.models import model as model_lib  # noqa: E402


def make_config(scan: bool, batch: int):
  c = default_config.get_config()
  c.batch_size = batch
  c.data.image_size = 224
  c.data.context_length = 77
  c.model.embed_dim = 512
  c.loss.impl = "dense"
  c.towers.image.variant = "B/16"
  c.towers.image.pool = "cls"
  c.towers.image.scan = scan
  t = c.towers.text
  t.width, t.depth, t.num_heads, t.vocab_size, t.context_length = 512, 12, 8, 49408, 77
  t.pool = "eot"          # same cost as argmax; argmax needs the clip tokenizer
  t.scan = scan
  return c


def abstract_state(config):
  model = model_lib.MultiTower(config)
  tx = optim.make_optimizer(config)
  state = jax.eval_shape(train.init_state_fn(model, tx, config), jax.random.key(0))
  batch = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype),
                       model_lib.dummy_inputs(config, config.batch_size))
  return model, tx, state, batch


def compile_step(config):
  model, tx, state, batch = abstract_state(config)
  step = train.make_train_step(model, tx, losses.make_objective(config, None),
                               optim.schedule(config), seed=0)
  t0 = time.perf_counter()
  lowered = jax.jit(step).lower(state, batch)
  compiled = lowered.compile()
  seconds = time.perf_counter() - t0
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return seconds, float(cost.get("flops", float("nan"))), state


def analytic_flops(config, params) -> dict:
  """6 x matmul params x tokens + attention, per tower, for the whole batch."""
  b = config.batch_size
  out = {}
  patches = (config.data.image_size // 16) ** 2
  for name, tokens, depth, width in (("image", patches + 1, 12, 768),
                                     ("text", config.data.context_length, 12, 512)):
    tower = params[name]
    n = 0
    for path, leaf in jax.tree_util.tree_leaves_with_path(tower):
      keys = [getattr(k, "key", "") for k in path]
      if keys[-1] == "kernel" and leaf.ndim >= 2:
        n += int(np.prod(leaf.shape))
    if name == "image":          # the patch embedding runs on patches only, heads on 1 token
      pe = int(np.prod(tower["encoder"]["patch_embed"]["kernel"].shape))
      head = int(np.prod(tower["head"]["kernel"].shape))
      dense = 6 * b * ((n - pe - head) * tokens + pe * patches + head)
    else:
      head = int(np.prod(tower["head"]["kernel"].shape))
      dense = 6 * b * ((n - head) * tokens + head)
    attention = 12 * depth * tokens ** 2 * width * b
    out[name] = (n, dense, attention)
  return out


def main(argv=None):
  ap = argparse.ArgumentParser()
  ap.add_argument("--batch", type=int, default=8)
  ap.add_argument("--out", default="docs/benchmarks/towers.md")
  args = ap.parse_args(argv)
  rows = {}
  for scan in (False, True):
    config = make_config(scan, args.batch)
    seconds, flops, _ = compile_step(config)
    rows[scan] = (seconds, flops)
    print(f"scan={scan}: compile {seconds:.1f}s, XLA flops {flops:.4g}", flush=True)
  config = make_config(False, args.batch)
  params = jax.eval_shape(lambda: model_lib.unbox(model_lib.MultiTower(config).init(
      jax.random.key(0), model_lib.dummy_inputs(config))["params"]))
  an = analytic_flops(config, params)
  total_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
  analytic = sum(d + a for _, d, a in an.values())
  xla = rows[False][1]
  lines = [
      "# Tower benchmark: ViT-B/16 + 12-layer text tower",
      "",
      f"`python tools/bench_towers.py --batch {args.batch}` on {platform.machine()} CPU "
      f"({os.cpu_count()} cores, jax {jax.__version__}, backend {jax.default_backend()}); "
      f"{total_params / 1e6:.1f}M params, global batch {args.batch}, image 224 px (197 "
      "tokens), text 77 tokens, fp32, softmax loss. Compile = `jax.jit(step).lower(...)"
      ".compile()` wall time of the whole train step (forward, backward, AdamW).",
      "",
      "| layers | compile time (s) | XLA cost_analysis FLOPs / step |",
      "|---|---|---|",
      f"| unrolled (scan=False) | {rows[False][0]:.1f} | {rows[False][1]:.4g} |",
      f"| nn.scan (scan=True) | {rows[True][0]:.1f} | {rows[True][1]:.4g} (loop body counted once) |",
      "",
      "| FLOPs per step | image | text | total |",
      "|---|---|---|---|",
      f"| matmul params (excl. embeddings) | {an['image'][0] / 1e6:.1f}M | "
      f"{an['text'][0] / 1e6:.1f}M | |",
      f"| 6 x params x tokens | {an['image'][1]:.4g} | {an['text'][1]:.4g} | "
      f"{an['image'][1] + an['text'][1]:.4g} |",
      f"| attention (12 x depth x L^2 x width) | {an['image'][2]:.4g} | {an['text'][2]:.4g} | "
      f"{an['image'][2] + an['text'][2]:.4g} |",
      f"| analytic total | | | {analytic:.4g} |",
      f"| XLA (unrolled) | | | {xla:.4g} |",
      f"| XLA / analytic | | | {xla / analytic:.3f} |",
      "",
      "XLA also counts what the analytic rule leaves out (LayerNorms, GELUs, softmax, the "
      "AdamW update, the loss), so a ratio a little above 1 is expected. On CPU the numbers "
      "are machine-load dependent; compile times were taken on a shared 2-core machine.",
  ]
  text = "\n".join(lines) + "\n"
  print(text)
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, "w") as f:
    f.write(text)


if __name__ == "__main__":
  main()
