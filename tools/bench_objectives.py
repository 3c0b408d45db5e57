"""Benchmark of the objectives beyond pooled pairs (Symile, GRAM, FILIP, MV-InfoNCE,
binding) against plain CLIP, on 8 simulated CPU devices.

  1. Per-device compiled temp memory of loss + gradient for `ring` and `gathered`, global
     batch doubling from 1,024: inputs are `jax.ShapeDtypeStruct`s, the programs are only
     lowered and compiled (nothing allocated).
  2. Wall time of loss + gradient (`ring`), median of interleaved repetitions, as a ratio
     to CLIP's at the same batch.

Three vector towers x, y, z of d-dimensional embeddings; FILIP scores x's and y's token
features (T tokens each, `--tokens`) and keeps `--keep` of them. Prints a markdown report
and writes it to docs/benchmarks/objectives.md.

    python tools/bench_objectives.py             # minutes on 2 cores
    python tools/bench_objectives.py --quick     # smaller sweep
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
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec as P  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from xmodal import default_config, losses  # noqa: E402
from xmodal.losses import terms  # noqa: E402

DEVICES = 8
GB = 1e9
READING = (
    "Reading the ratios: `binding` is two CLIP calls, `symile` three (one per anchor) and "
    "`gram` one call whose score is k-1 matmuls plus a (k-1) x (k-1) quadratic form per "
    "pair; `mv_infonce` scores 3B x 3B embeddings (9x CLIP's pairs, one direction); "
    "`filip` scores every kept token pair (keep^2 = 64x CLIP's dot products per example "
    "pair, with a max over one side and a mean over the other) and selects tokens by their "
    "local max similarity first. FILIP's ring memory per device grows with b x tile_size x "
    "keep^2 (one tile of token scores): lower `loss.tile_size` and `keep` bound it.")
# objective -> (term options, towers it reads): every one spans x, y (and z)
CASES = {
    "softmax": dict(pairs=("x:y",)),
    "binding": dict(pairs=("x:y:z",), anchor="x"),
    "symile": dict(pairs=("x:y:z",)),
    "gram": dict(pairs=("x:y:z",)),
    "mv_infonce": dict(pairs=("x:y:z",)),
    "filip": dict(pairs=("x:y",)),
}


def _mesh():
  return jax.make_mesh((DEVICES, 1, 1), ("data", "fsdp", "model"),
                       axis_types=(jax.sharding.AxisType.Auto,) * 3,
                       devices=jax.devices()[:DEVICES])


def _fmt(n):
  return f"{n / GB:.2f} GB" if n >= GB else f"{n / 1e6:.1f} MB"


def config_for(name, impl, batch, dim, tile, keep):
  c = default_config.get_config()
  vec = lambda: ml_collections.ConfigDict({  # noqa: E731
      **default_config.tower_defaults("vector").to_dict(), "features": 8})
  c.towers = ml_collections.ConfigDict(dict(x=vec(), y=vec(), z=vec()))
  c.batch_size, c.model.embed_dim = batch, dim
  c.loss.impl, c.loss.tile_size = impl, tile
  opts = dict(CASES[name])
  if name == "filip":
    opts["keep"] = keep
  c.loss.terms = ml_collections.ConfigDict({name: terms.section(name, **opts)})
  return c


def shapes(name, batch, dim, tokens):
  s = {t: (batch, dim) for t in "xyz"}
  if name == "filip":
    for t in "xy":
      s[f"{t}:tokens"] = (batch, tokens, dim)
      s[f"{t}:mask"] = (batch, tokens)
  return s


def loss_grad(name, impl, mesh, batch, dim, tile, tokens, keep):
  objective = losses.Objective(config_for(name, impl, batch, dim, tile, keep), mesh)
  sharding = NamedSharding(mesh, P(("data", "fsdp")))
  emb = {k: jax.ShapeDtypeStruct(v, jnp.float32, sharding=sharding)
         for k, v in shapes(name, batch, dim, tokens).items()}
  extras = {"rng": jax.random.key(0), "step": jnp.int32(0)}
  params = {"logit_scale": jnp.float32(2.0)}
  f = jax.jit(jax.value_and_grad(lambda p, e, x: objective.loss(p, e, x)[0], argnums=(0, 1)))
  return f, (params, emb, extras), sharding


def memory(names, sizes, a):
  mesh = _mesh()
  head = " | ".join(f"`{n}`" for n in names)
  out = {impl: [f"| global batch | b | {head} |", "|---:|---:|" + "---:|" * len(names)]
         for impl in ("ring", "gathered")}
  for batch in sizes:
    for impl in ("ring", "gathered"):
      t0 = time.time()
      cells = []
      for n in names:
        f, args, _ = loss_grad(n, impl, mesh, batch, a.dim, a.tile, a.tokens, a.keep)
        cells.append(f.lower(*args).compile().memory_analysis().temp_size_in_bytes)
      out[impl].append(f"| {batch:,} | {batch // DEVICES:,} | "
                       + " | ".join(_fmt(c) for c in cells) + " |")
      print(f"  {impl} B={batch}: " + ", ".join(f"{n} {_fmt(c)}" for n, c in zip(names, cells))
            + f" ({time.time() - t0:.0f}s)", flush=True)
  return out


def timing(names, sizes, a):
  mesh = _mesh()
  rows = ["| global batch | " + " | ".join(f"`{n}` (s)" for n in names) + " | "
          + " | ".join(f"`{n}` / `softmax`" for n in names) + " |",
          "|---:|" + "---:|" * (2 * len(names))]
  for batch in sizes:
    runs = {}
    for i, n in enumerate(names):
      f, (params, emb, extras), sharding = loss_grad(n, "ring", mesh, batch, a.dim, a.tile,
                                                     a.tokens, a.keep)
      keys = jax.random.split(jax.random.key(i), len(emb))
      real = {}
      for k, (key, s) in zip(emb, zip(keys, emb.values())):
        x = jax.random.normal(key, s.shape)
        x = (x > -2).astype(jnp.float32) if k.endswith(":mask") else x / jnp.linalg.norm(
            x, axis=-1, keepdims=True)
        real[k] = jax.device_put(x, sharding)
      args = (params, real, extras)
      jax.block_until_ready(f(*args))
      runs[n] = (f, args, [])
    for _ in range(a.reps):
      for n in names:
        f, args, samples = runs[n]
        t0 = time.perf_counter()
        jax.block_until_ready(f(*args))
        samples.append(time.perf_counter() - t0)
    med = {n: float(np.median(runs[n][2])) for n in names}
    rows.append(f"| {batch:,} | " + " | ".join(f"{med[n]:.3f}" for n in names) + " | "
                + " | ".join(f"{med[n] / med['softmax']:.2f}" for n in names) + " |")
    print(f"  ring B={batch}: " + ", ".join(f"{n} {med[n]:.3f}s" for n in names), flush=True)
  return rows


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--quick", action="store_true")
  p.add_argument("--dim", type=int, default=256)
  p.add_argument("--tile", type=int, default=256)
  p.add_argument("--tokens", type=int, default=16, help="FILIP: tokens per example per side")
  p.add_argument("--keep", type=int, default=8, help="FILIP: tokens kept per example")
  p.add_argument("--max-batch", type=int, default=1 << 16)
  p.add_argument("--time-sizes", default="2048,8192")
  p.add_argument("--reps", type=int, default=5)
  p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                               "..", "docs", "benchmarks", "objectives.md"))
  a = p.parse_args()
  if len(jax.devices()) < DEVICES:
    raise SystemExit(f"needs {DEVICES} devices, got {jax.devices()}")
  max_batch = 1 << 13 if a.quick else a.max_batch
  sizes = [b for b in (1024 << i for i in range(20)) if b <= max_batch]
  time_sizes = [2048] if a.quick else [int(s) for s in a.time_sizes.split(",") if s]
  names = list(CASES)
  lines = [
      "# Objectives beyond pooled pairs: benchmarks",
      "",
      f"Generated by `{' '.join(['python tools/bench_objectives.py'] + sys.argv[1:])}` on "
      f"{DEVICES} simulated CPU devices (`--xla_force_host_platform_device_count=8`, "
      f"{os.cpu_count()} CPU cores shared with other jobs, {platform.machine()}, jax "
      f"{jax.__version__}); d={a.dim}, float32, `tile_size={a.tile}`. Towers x, y, z: "
      "`softmax` is CLIP over x:y; `binding` binds y and z to x (two CLIP calls); `symile` "
      "and `mv_infonce` span x:y:z (Symile: three anchors, each one CLIP-sized call; "
      "MV-InfoNCE: one call over the 3B view embeddings); `gram` spans x:y:z with x the "
      f"anchor; `filip` scores x's and y's token features ({a.tokens} tokens per example, "
      f"{a.keep} kept by FILIP's local-max rule).",
      "",
      "## 1. Loss + gradient: compiled temp memory per device",
      "",
      "`memory_analysis().temp_size_in_bytes` of `jax.jit(value_and_grad(loss))` compiled "
      "for `jax.ShapeDtypeStruct` inputs; b = rows per device. Arguments (the embeddings) "
      "are not temp. The ring holds a few [b, d] blocks (per tower, per anchor) and one "
      "tile; the gathered driver holds the all-gathered [B, d] columns and one tile. With 8 "
      "devices b = B / 8, so both double with B here; at a fixed b, only the gathered "
      "column grows with the number of devices.",
  ]
  print("memory", flush=True)
  tables = memory(names, sizes, a)
  lines += ["", "### `ring`", ""] + tables["ring"] + ["", "### `gathered`", ""] + tables["gathered"]
  lines += ["", f"## 2. Loss + gradient: ring wall time (median of {a.reps} interleaved "
            "repetitions after a warm-up)", "",
            "The 8 simulated devices share the CPU cores and the machine was shared with "
            "other jobs: relative numbers only (ratio to CLIP's ring at the same batch)."]
  print("timing", flush=True)
  lines += [""] + timing(names, time_sizes, a) + ["", READING]
  text = "\n".join(lines) + "\n"
  os.makedirs(os.path.dirname(a.out), exist_ok=True)
  with open(a.out, "w", encoding="utf-8") as f:
    f.write(text)
  print(text)
  print(f"wrote {a.out}")


if __name__ == "__main__":
  main()
