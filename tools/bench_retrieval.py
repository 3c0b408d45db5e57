"""Exact retrieval ranks at scale: per-device memory and time of the sharded ranking
(xmodal/evaluate/ranking.py) against what the dense [Q, G] score matrix would need.

For Q queries against a gallery of G (paired: query i's match is gallery row i) of
D-dimensional unit vectors, on 8 simulated CPU devices:
  memory  the compiled per-device program's argument + output + temp bytes
          (`memory_analysis`; XLA:CPU's peak figure leaves temporaries out), for one query
          block against the device's gallery shard; the dense path's [Q, G] float32 score
          matrix on one device for comparison;
  time    wall clock of `ranking.ranks` over every query (one direction), and queries/s;
  exact   ranks of a sample of queries equal numpy's dense ranks (`ranking.dense_ranks`).
Sizes past --max_run are compiled, not run (memory only).

  python tools/bench_retrieval.py                 # 10k and 100k run, 1M compiled: the table
  python tools/bench_retrieval.py --sizes 2000 --max_run 2000    # a seconds-fast smoke run
"""

import argparse
import os
import sys
import time

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec as P  # noqa: E402

from xmodal import default_config, parallel  # noqa: E402
from xmodal.evaluate import ranking  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "docs", "benchmarks", "retrieval.md")
GIB = 1024 ** 3


def data(n: int, dim: int, seed: int = 0):
  """Gallery [n, dim] unit vectors; queries = gallery + noise (so ranks spread), unit."""
  rng = np.random.default_rng(seed)
  gallery = rng.standard_normal((n, dim), np.float32)
  gallery /= np.linalg.norm(gallery, axis=1, keepdims=True)
  queries = gallery + 5.0 * rng.standard_normal((n, dim), np.float32) / np.sqrt(dim)
  queries /= np.linalg.norm(queries, axis=1, keepdims=True)
  return queries, gallery


def compiled_memory(mesh, n: int, dim: int, block: int) -> dict:
  """Per-device bytes of the ranking program for one query block (shapes only)."""
  axes = tuple(a for a in ranking.BATCH_AXES if a in mesh.axis_names)
  devices = int(np.prod([mesh.shape[a] for a in axes]))
  shard_rows = -(-n // devices)
  fn = ranking._ranker(mesh, shard_rows, n)
  g = jax.ShapeDtypeStruct((shard_rows * devices, dim), np.float32,
                           sharding=NamedSharding(mesh, P(axes)))
  q = jax.ShapeDtypeStruct((block, dim), np.float32)
  pos = jax.ShapeDtypeStruct((block, 1), np.int32)
  t0 = time.time()
  mem = fn.lower(q, g, pos).compile().memory_analysis()
  return {"argument": mem.argument_size_in_bytes, "output": mem.output_size_in_bytes,
          "temp": mem.temp_size_in_bytes, "compile_s": time.time() - t0}


def measure(mesh, n: int, dim: int, block: int, run: bool, check: int) -> dict:
  row = {"n": n, **compiled_memory(mesh, n, dim, block)}
  row["dense"] = 4 * n * n
  if not run:
    return row
  queries, gallery = data(n, dim)
  own = np.arange(n)[:, None]
  ranking.ranks(queries[:block], gallery, own[:block], mesh, block)     # compile, warm up
  t0 = time.time()
  rank, nonfinite = ranking.ranks(queries, gallery, own, mesh, block)
  row["time_s"] = time.time() - t0
  sample = np.random.default_rng(1).choice(n, min(check, n), replace=False)
  row["exact"] = bool(np.array_equal(
      rank[sample], ranking.dense_ranks(queries[sample], gallery, own[sample])))
  row["R1"] = float(np.mean(rank < 1))
  assert nonfinite == 0
  return row


def table(rows, dim: int, block: int, devices: int) -> str:
  head = (f"# Exact retrieval ranks: memory per device and time, {devices} simulated CPU "
          f"devices\n\n"
          f"Paired queries and gallery of D = {dim} unit vectors; query blocks of {block}; "
          f"`python tools/bench_retrieval.py` (jax {jax.__version__}). Memory: the compiled "
          f"per-device ranking program for one query block (`memory_analysis`: arguments = "
          f"the device's gallery shard + the block, temp = its [block, G / devices] score "
          f"tile and masks). Dense: the [Q, G] float32 score matrix the plain path holds on "
          f"one device. Time: every query of one direction, on the 2-core development "
          f"machine shared with other jobs (so noisy; the ranks are exact either way: "
          f"'exact' compares a sample of queries with numpy's dense ranks). Sizes without "
          f"a time were compiled, not run.\n\n"
          f"| Q = G | per device: arguments GiB | temp GiB | total GiB | dense [Q, G] GiB | "
          f"compile s | time s | queries/s | exact | R@1 |\n"
          f"|---|---|---|---|---|---|---|---|---|---|\n")
  lines = []
  for r in rows:
    total = r["argument"] + r["output"] + r["temp"]
    timed = "time_s" in r
    lines.append(
        f"| {r['n']:,} | {r['argument'] / GIB:.3f} | {r['temp'] / GIB:.3f} | "
        f"{total / GIB:.3f} | {r['dense'] / GIB:,.1f} | {r['compile_s']:.1f} | "
        f"{r['time_s']:.1f} | {r['n'] / r['time_s']:,.0f} | {'yes' if r['exact'] else 'NO'} | "
        f"{r['R1']:.3f} |" if timed else
        f"| {r['n']:,} | {r['argument'] / GIB:.3f} | {r['temp'] / GIB:.3f} | "
        f"{total / GIB:.3f} | {r['dense'] / GIB:,.1f} | {r['compile_s']:.1f} | | | | |")
  return head + "\n".join(lines) + "\n"


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
  ap.add_argument("--max_run", type=int, default=100_000, help="largest size that is run")
  ap.add_argument("--dim", type=int, default=512)
  ap.add_argument("--block", type=int, default=1024)
  ap.add_argument("--check", type=int, default=200, help="queries compared with numpy")
  ap.add_argument("--out", default=OUT, help="markdown file ('' = print only)")
  args = ap.parse_args(argv)
  mesh = parallel.make_mesh(default_config.get_config())
  rows = []
  for n in args.sizes:
    rows.append(measure(mesh, n, args.dim, args.block, n <= args.max_run, args.check))
    print(rows[-1], flush=True)
  text = table(rows, args.dim, args.block, mesh.size)
  print(text)
  if args.out:
    with open(args.out, "w") as f:
      f.write(text)
    print(f"wrote {args.out}")
  return 0 if all(r.get("exact", True) for r in rows) else 1


if __name__ == "__main__":
  sys.exit(main())
