"""Benchmark of the contrastive objectives on 8 simulated CPU devices.

  1. Per-device compiled temp memory of loss + gradient, `ring` vs `gathered`, for every
     registered objective (xmodal/losses/objectives), d=512, float32, global batch 4096
     doubling to 1,048,576. Inputs are `jax.ShapeDtypeStruct`s: nothing is allocated, the
     programs are only lowered and compiled.
  2. Wall time of loss + gradient of every objective's ring, against plain CLIP's ring
     (interleaved repetitions), and the gathered driver's, at sizes where both fit.
  3. Train-step temp memory of a ViT-B/16-sized two-tower model (xmodal's own towers) with
     and without micro-batching (`train.microbatches`), compile only.

Prints a markdown report and writes it to docs/benchmarks/losses.md.

    python tools/bench_losses.py                # everything, tens of minutes on 2 cores
    python tools/bench_losses.py --quick        # smaller sweep, no train-step section
"""

import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import argparse  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec as P  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import ml_collections  # noqa: E402

from xmodal import default_config, losses, optim, parallel, train  # noqa: E402
from xmodal.losses import objectives, terms  # noqa: E402
from xmodal.models import model as model_lib  # noqa: E402

GB = 1e9
BUDGET = 24e9            # "fits a 24 GB device"
DEVICES = 8


def _mesh(n=DEVICES):
  return jax.make_mesh((n, 1, 1), ("data", "fsdp", "model"),
                       axis_types=(jax.sharding.AxisType.Auto,) * 3, devices=jax.devices()[:n])


def _fmt(n_bytes):
  if n_bytes >= GB:
    return f"{n_bytes / GB:.2f} GB"
  return f"{n_bytes / 1e6:.1f} MB"


def objective_config(name, impl, batch, dim, tile):
  """Vector towers x, y (students) and tx, ty, ref (frozen teacher / reference towers on
  their inputs), one term of objective `name` with the options its driver tests use."""
  c = default_config.get_config()
  vec = lambda **kw: ml_collections.ConfigDict({  # noqa: E731
      **default_config.tower_defaults("vector").to_dict(), "features": 8, **kw})
  c.towers = ml_collections.ConfigDict(dict(x=vec(), y=vec(), tx=vec(input="x"),
                                            ty=vec(input="y"), ref=vec(input="x")))
  c.batch_size, c.model.embed_dim = batch, dim
  c.loss.impl, c.loss.tile_size = impl, tile
  c.loss.terms = ml_collections.ConfigDict({name: terms.section(
      name, **objectives.get(name).EXAMPLE)})
  return c


def loss_grad(name, impl, mesh, batch, dim, tile):
  """(jitted value_and_grad of the objective w.r.t. params and embeddings, its args)."""
  objective = losses.Objective(objective_config(name, impl, batch, dim, tile), mesh)
  sharding = NamedSharding(mesh, P(("data", "fsdp")))
  emb = lambda: jax.ShapeDtypeStruct((batch, dim), jnp.float32, sharding=sharding)  # noqa: E731
  embeddings = {"x": emb(), "y": emb()}
  extras = {"frozen": {t: emb() for t in ("tx", "ty", "ref")},
            "ema": {name: {"x": emb(), "y": emb()}}, "rng": jax.random.key(0),
            "step": jnp.int32(0)}
  params = {"logit_scale": jnp.float32(2.0), "logit_bias": jnp.float32(-5.0)}
  f = jax.jit(jax.value_and_grad(lambda p, e, x: objective.loss(p, e, x)[0], argnums=(0, 1)))
  return f, (params, embeddings, extras)


def loss_temp_bytes(name, impl, mesh, batch, dim, tile):
  f, args = loss_grad(name, impl, mesh, batch, dim, tile)
  return f.lower(*args).compile().memory_analysis().temp_size_in_bytes


def memory_section(names, sizes, dim, tile):
  mesh = _mesh()
  head = " | ".join(f"`{n}`" for n in names)
  tables = {impl: [f"| global batch | per-device b | 4·b·d·4 + b·t·4 | {head} |",
                   "|---:|---:|---:|" + "---:|" * len(names)] for impl in ("ring", "gathered")}
  for batch in sizes:
    b = batch // DEVICES
    bound = 4 * b * dim * 4 + b * min(tile, b) * 4
    for impl in ("ring", "gathered"):
      t0 = time.time()
      cells = [loss_temp_bytes(n, impl, mesh, batch, dim, tile) for n in names]
      tables[impl].append(f"| {batch:,} | {b:,} | {_fmt(bound)} | "
                          + " | ".join(_fmt(c) for c in cells) + " |")
      print(f"  {impl} B={batch}: " + ", ".join(f"{n} {_fmt(c)}" for n, c in zip(names, cells))
            + f" ({time.time() - t0:.0f}s to compile)", flush=True)
  return tables


def timing_section(names, sizes, dim, tile, reps):
  """Median wall time of loss + gradient per objective and driver; repetitions interleave
  the objectives, so a slow spell of the shared machine hits all of them."""
  mesh = _mesh()
  sharding = NamedSharding(mesh, P(("data", "fsdp")))
  rows = ["| global batch | driver | " + " | ".join(f"`{n}` (s)" for n in names)
          + " | " + " | ".join(f"`{n}` / `softmax`" for n in names) + " |",
          "|---:|:---|" + "---:|" * (2 * len(names))]
  for batch in sizes:
    keys = jax.random.split(jax.random.key(batch), 7)

    def unit(k):
      x = jax.random.normal(k, (batch, dim))
      return jax.device_put(x / jnp.linalg.norm(x, axis=1, keepdims=True), sharding)
    for impl in ("ring", "gathered"):
      runs = {}
      for n in names:
        f, (params, _, _) = loss_grad(n, impl, mesh, batch, dim, tile)
        embeddings = {"x": unit(keys[0]), "y": unit(keys[1])}
        extras = {"frozen": {"tx": unit(keys[2]), "ty": unit(keys[3]), "ref": unit(keys[4])},
                  "ema": {n: {"x": unit(keys[5]), "y": unit(keys[6])}},
                  "rng": jax.random.key(0), "step": jnp.int32(0)}
        args = (params, embeddings, extras)
        jax.block_until_ready(f(*args))                      # compile + warm up
        runs[n] = (f, args, [])
      for _ in range(reps):
        for n in names:
          f, args, samples = runs[n]
          t0 = time.perf_counter()
          jax.block_until_ready(f(*args))
          samples.append(time.perf_counter() - t0)
      med = {n: float(np.median(runs[n][2])) for n in names}
      rows.append(f"| {batch:,} | {impl} | " + " | ".join(f"{med[n]:.3f}" for n in names)
                  + " | " + " | ".join(f"{med[n] / med['softmax']:.2f}" for n in names) + " |")
      print(f"  {impl} B={batch}: " + ", ".join(f"{n} {med[n]:.3f}s" for n in names), flush=True)
  return rows


def vit_b16_config(batch, microbatches, impl, depth, loss_name):
  c = default_config.get_config()
  c.batch_size = batch
  c.eval.batch_size = DEVICES
  c.data.image_size = 224
  c.data.context_length = 77
  c.model.embed_dim = 512
  c.towers.image.update(dict(width=768, depth=depth, num_heads=12, patch_size=16, pool="cls"))
  c.towers.text.update(dict(width=512, depth=depth, num_heads=8))
  c.loss.name, c.loss.impl = loss_name, impl
  c.train.microbatches = microbatches
  return c


def train_step_temp_bytes(config):
  mesh = parallel.make_mesh(config, jax.devices()[:DEVICES])
  model = model_lib.MultiTower(config)
  tx = optim.make_optimizer(config)
  objective = losses.make_objective(config, mesh)
  init = train.init_state_fn(model, tx, config)
  abstract = jax.eval_shape(init, jax.random.key(0))
  rep, batch_sh = parallel.replicated(mesh), parallel.batch_sharding(mesh)
  state = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=rep), abstract)
  s = config.data.image_size
  batch = {"image": jax.ShapeDtypeStruct((config.batch_size, s, s, 3), jnp.uint8, sharding=batch_sh),
           "text": jax.ShapeDtypeStruct((config.batch_size, config.data.context_length), jnp.int32,
                                        sharding=batch_sh)}
  step = train.make_train_step(model, tx, objective, optim.schedule(config),
                               config.train.microbatches)
  t0 = time.time()
  compiled = jax.jit(step, donate_argnums=0).lower(state, batch).compile()
  analysis = compiled.memory_analysis()
  params = sum(int(np.prod(a.shape)) for a in jax.tree.leaves(abstract["params"]))
  return analysis.temp_size_in_bytes, analysis.argument_size_in_bytes, params, time.time() - t0


def train_section(batch, microbatches_list, depth, loss_name):
  rows = ["| global batch | train.microbatches | rows per micro-batch per device | step temp "
          "per device | fits 24 GB | compile (s) |", "|---:|---:|---:|---:|:---:|---:|"]
  params = None
  for k in microbatches_list:
    config = vit_b16_config(batch, k, "ring", depth, loss_name)
    temp, args, params, secs = train_step_temp_bytes(config)
    rows.append(f"| {batch:,} | {k} | {batch // DEVICES // k:,} | {_fmt(temp)} | "
                f"{'yes' if temp + args <= BUDGET else 'no'} | {secs:.0f} |")
    print(f"  microbatches={k}: temp {_fmt(temp)}, arguments {_fmt(args)} ({secs:.0f}s)",
          flush=True)
  return rows, params


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--quick", action="store_true", help="small sweep, no train-step section")
  parser.add_argument("--objectives", default="", help="comma-separated; default: all")
  parser.add_argument("--dim", type=int, default=512)
  parser.add_argument("--tile", type=int, default=256)
  parser.add_argument("--max-batch", type=int, default=1 << 20)
  parser.add_argument("--time-sizes", default="4096,8192")
  parser.add_argument("--reps", type=int, default=3)
  parser.add_argument("--train-batch", type=int, default=65536)
  parser.add_argument("--train-depth", type=int, default=12)
  parser.add_argument("--microbatches", default="1,32,128")
  parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                    "..", "docs", "benchmarks", "losses.md"))
  args = parser.parse_args()
  if len(jax.devices()) < DEVICES:
    raise SystemExit(f"needs {DEVICES} devices, got {jax.devices()}")
  max_batch = 1 << 14 if args.quick else args.max_batch
  sizes = [b for b in (4096 << i for i in range(20)) if b <= max_batch]
  time_sizes = [4096] if args.quick else [int(s) for s in args.time_sizes.split(",") if s]

  # objectives over tower groups, token features or views: tools/bench_objectives.py
  pooled_pairs = [n for n in objectives.names() if not any(
      getattr(objectives.get(n), a, False) for a in ("GROUP", "TOKENS", "VIEWS"))]
  names = [n for n in args.objectives.split(",") if n] or pooled_pairs
  if "softmax" not in names:
    names.insert(0, "softmax")                 # the baseline of the time ratios
  lines = [
      "# Contrastive loss benchmarks",
      "",
      f"Generated by `{' '.join(['python tools/bench_losses.py'] + sys.argv[1:])}` on "
      f"{DEVICES} simulated CPU devices "
      f"(`--xla_force_host_platform_device_count=8`, {os.cpu_count()} CPU cores, "
      f"{platform.machine()}, jax {jax.__version__}); d={args.dim}, float32, ring "
      f"`tile_size={args.tile}` (t). Every registered objective, with the options of its "
      "driver-equivalence test (`EXAMPLE` in its module): teachers and references are "
      "other d-dimensional embeddings of the batch, distillation has one teacher.",
      "",
      "## 1. Loss + gradient: compiled temp memory per device",
      "",
      "`jax.jit(value_and_grad(loss)).lower(...).compile().memory_analysis().temp_size_in_bytes`"
      " with `jax.ShapeDtypeStruct` inputs (nothing allocated); b = per-device rows. "
      "Arguments (the embeddings, teachers' and references' embeddings) and outputs are not "
      "temp. The ring holds the travelling block of columns and its travelling gradient, each "
      "with ppermute's receive buffer (about 4 blocks of b x d floats: the 4·b·d·4 + b·t·4 "
      "column), plus a few [b, t] tiles and O(b) statistics; objectives whose columns carry "
      "metadata (teacher or reference embeddings: `cwcl`, `distill`, `momentum`) carry it "
      "round the ring too, one more travelling [b, d] block each. Every ring column grows "
      "with b only, never with the global batch B; the gathered [b, B] blocks grow with "
      "b x B.",
  ]
  print(f"memory sweep ({', '.join(names)})", flush=True)
  tables = memory_section(names, sizes, args.dim, args.tile)
  lines += ["", "### `ring`", ""] + tables["ring"]
  lines += ["", "### `gathered`", ""] + tables["gathered"]

  lines += ["", "## 2. Loss + gradient: wall time (median of "
            f"{args.reps} interleaved repetitions, after a warm-up call)", "",
            "All 8 simulated devices share the machine's CPU cores (and the machine was "
            "shared with other jobs), so these are relative numbers only: the ratio columns "
            "compare each objective's time with plain CLIP's (`softmax`) under the same "
            "driver. A teacher's or reference's scores are one more matmul per tile in the "
            "forward pass and again in the recomputing backward pass (CLIP's ring: one "
            "forward, three backward)."]
  print("timing", flush=True)
  lines += [""] + timing_section(names, time_sizes, args.dim, args.tile, args.reps)

  if not args.quick:
    print("train step", flush=True)
    ks = [int(k) for k in args.microbatches.split(",")]
    rows, params = train_section(args.train_batch, ks, args.train_depth, "softmax")
    lines += ["", "## 3. Train step: compiled temp memory per device, with and without "
              "micro-batching", "",
              f"ViT-B/16-sized towers built by xmodal from its config (image: width 768, depth "
              f"{args.train_depth}, 12 heads, patch 16, 224 px; text: width 512, depth "
              f"{args.train_depth}, 8 heads, context 77; embed 512; {params / 1e6:.0f}M params), "
              "`loss.name=softmax`, `loss.impl=ring`, float32, no rematerialisation, "
              f"global batch {args.train_batch:,} over {DEVICES} devices (data-parallel, "
              "params replicated), AdamW. Compile only. 'fits' counts temp plus arguments "
              "(params, optimizer state, the batch).", ""] + rows
  text = "\n".join(lines) + "\n"
  print()
  print(text)
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  with open(args.out, "w") as f:
    f.write(text)
  print(f"wrote {os.path.abspath(args.out)}")


if __name__ == "__main__":
  main()
