"""Per-device memory and collective traffic of the train step under different meshes.

For a ViT-L/14 image tower + 12-layer text tower (CLIP ViT-L/14 sizes) on 8 simulated CPU
devices, compiles the real train step (xmodal.train.make_train_step) for
  replicated (data=8), fsdp=8, and fsdp=4 x model=2
and reports per device: parameter + optimizer-state bytes (from the shardings), the
compiled step's argument / temp bytes (`memory_analysis`), and the bytes moved by
all-gather, reduce-scatter and all-reduce per step (summed over the compiled HLO's
collective ops, output shapes). Nothing is executed; shapes only.

  python tools/bench_sharding.py                 # the table in docs/benchmarks/sharding.md
  python tools/bench_sharding.py --small          # a seconds-fast smoke run
"""

import argparse
import os
import re
import sys
import time

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import numpy as np  # noqa: E402

from xmodal import default_config, losses, optim, parallel, sharding, train  # noqa: E402
from xmodal.models import model as model_lib  # noqa: E402

NOTE = ("XLA:CPU reduces the gradients with all-reduce (each device t"
        "hen keeps its shard), so the reduce-scatter column reads 0 on this backend.")
MESHES = {"replicated (data=8)": (8, 1, 1), "fsdp=8": (1, 8, 1), "fsdp=4 x model=2": (1, 4, 2)}
DTYPE_BYTES = {"f32": 4, "bf16": 2, "f16": 2, "s32": 4, "u32": 4, "s8": 1, "u8": 1, "pred": 1,
               "f64": 8, "s64": 8}
COLLECTIVE = re.compile(r"\s(all-gather|reduce-scatter|all-reduce)(?:-start)?\(")
SHAPE = re.compile(r"(f32|bf16|f16|s32|u32|s8|u8|pred|f64|s64)\[([0-9,]*)\]")


def model_config(small: bool):
  c = default_config.get_config()
  if small:
    image = dict(patch_size=8, width=64, depth=2, num_heads=4)
    text = dict(width=64, depth=2, num_heads=4)
    c.data.image_size, c.data.context_length, c.model.embed_dim, c.batch_size = 32, 16, 64, 16
  else:   # CLIP ViT-L/14 image tower, 12-layer width-768 text tower
    image = dict(patch_size=14, width=1024, depth=24, num_heads=16)
    text = dict(width=768, depth=12, num_heads=12)
    c.data.image_size, c.data.context_length, c.model.embed_dim, c.batch_size = 224, 77, 768, 64
  c.towers.image.update(image)
  c.towers.text.update(text)
  c.towers.image.pool = "cls"
  return c


def collective_bytes(hlo: str) -> dict:
  """Bytes produced per device by each kind of collective in an HLO module's text."""
  out = {"all-gather": 0, "reduce-scatter": 0, "all-reduce": 0}
  for line in hlo.splitlines():
    m = COLLECTIVE.search(line)
    if not m or " = " not in line:
      continue
    result_shapes = line.split(" = ", 1)[1][:m.start() - line.index(" = ") - 3]
    for dtype, dims in SHAPE.findall(result_shapes):
      n = int(np.prod([int(d) for d in dims.split(",") if d])) if dims else 1
      out[m.group(1)] += n * DTYPE_BYTES[dtype]
  return out


def measure(config, mesh_shape):
  with config.unlocked():
    config.mesh.data, config.mesh.fsdp, config.mesh.model = mesh_shape
  mesh = parallel.make_mesh(config)
  model, tx = model_lib.MultiTower(config), optim.make_optimizer(config)
  objective = losses.make_objective(config, mesh)
  state_sh = sharding.state_shardings(model, tx, config, mesh)
  abstract = jax.eval_shape(train.init_state_fn(model, tx, config), jax.random.key(0))
  state = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                       abstract, state_sh)
  batch_sh = parallel.batch_sharding(mesh)
  dummy = model_lib.dummy_inputs(config, config.batch_size)
  batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=batch_sh) for k, v in dummy.items()}
  total_state = sum(a.size * a.dtype.itemsize for a in jax.tree.leaves(abstract))
  per_device_state = sum(
      int(np.prod(s.shard_shape(a.shape))) * a.dtype.itemsize
      for a, s in zip(jax.tree.leaves(abstract), jax.tree.leaves(state_sh)))
  step = jax.jit(train.make_train_step(model, tx, objective, optim.schedule(config)),
                 in_shardings=(state_sh, {k: batch_sh for k in batch}),
                 out_shardings=(state_sh, parallel.replicated(mesh)), donate_argnums=0)
  t0 = time.time()
  with sharding.context(config, mesh):
    compiled = step.lower(state, batch).compile()
  compile_s = time.time() - t0
  mem = compiled.memory_analysis()
  traffic = collective_bytes(compiled.as_text())
  num_params = sum(a.size for a in jax.tree.leaves(abstract["params"]))
  return dict(num_params=num_params, total_state=total_state, per_device_state=per_device_state,
              argument=mem.argument_size_in_bytes, temp=mem.temp_size_in_bytes,
              compile_s=compile_s, **traffic)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--small", action="store_true", help="tiny towers (smoke test)")
  parser.add_argument("--out", default="docs/benchmarks/sharding.md")
  args = parser.parse_args(argv)
  config = model_config(args.small)
  gib = 2 ** 30
  rows = []
  for name, shape in MESHES.items():
    r = measure(config.copy_and_resolve_references(), shape)
    fsdp = shape[1] * shape[2]       # devices a parameter is split over
    ideal = r["total_state"] / fsdp
    rows.append(
        f"| {name} | {r['per_device_state'] / gib:.3f} | {r['per_device_state'] / ideal:.2f} | "
        f"{r['argument'] / gib:.3f} | {r['temp'] / gib:.3f} | {r['all-gather'] / gib:.3f} | "
        f"{r['reduce-scatter'] / gib:.3f} | {r['all-reduce'] / gib:.3f} | {r['compile_s']:.0f} |")
    print(rows[-1], flush=True)
  towers = "ViT-L/14 (224px) + 12-layer width-768 text" if not args.small else "tiny towers"
  table = "\n".join([
      f"# Train-step memory and collectives per device: {towers}",
      "",
      f"{r['num_params'] / 1e6:.0f}M parameters; params + AdamW state = "
      f"{r['total_state'] / gib:.2f} GiB in all; global batch {config.batch_size}; "
      f"8 simulated CPU devices (jax {jax.__version__}); `python tools/bench_sharding.py`.",
      "State/ideal = per-device params + optimizer state over (total / devices a parameter is "
      "split over); the target is <= 1.2. Collective columns: bytes produced per device per "
      "step by each kind of collective in the compiled HLO. " + NOTE,
      "",
      "| mesh | params+opt GiB/device | state/ideal | step arguments GiB | step temp GiB | "
      "all-gather GiB | reduce-scatter GiB | all-reduce GiB | compile s |",
      "|---|---|---|---|---|---|---|---|---|",
      *rows, ""])
  print(table)
  if not args.small:
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
      f.write(table)
  return 0


if __name__ == "__main__":
  sys.exit(main())
