"""A real multi-process run: 2 processes x 4 CPU devices on localhost (gloo collectives),
checked against 1 process x 8 devices, then resumed on another topology."""

import os
import subprocess
import sys

import jax
import numpy as np
import portpicker
import pytest

pytestmark = pytest.mark.slow   # end-to-end / subprocess / torch parity

from xmodal import metrics as metrics_lib, sharding, train
from tiny import make_tiny_config

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
# A constant learning rate after warmup, so runs of different lengths share a schedule.
OVERRIDES = {"mesh.data": 2, "mesh.fsdp": 2, "mesh.model": 2, "optim.warmup_steps": 2,
             "optim.end_lr_fraction": 1.0, "train.checkpoint_every": 3, "train.log_every": 1,
             "data.image_size": 16, "towers.text.num_heads": 4, "towers.image.num_heads": 4}


def _losses(workdir):
  return {r["step"]: r["loss"] for r in metrics_lib.read_jsonl(workdir) if "loss" in r}


def _run_two_processes(tmp_path, workdir, steps):
  config_file = tmp_path / "exp.py"
  overrides = dict(OVERRIDES, **{"train.total_steps": steps})
  config_file.write_text(f"import sys\nsys.path.insert(0, {TESTS_DIR!r})\n"
                         "from tiny import make_tiny_config\n"
                         f"def get_config(arg=None):\n  return make_tiny_config(**{overrides!r})\n")
  port = portpicker.pick_unused_port()
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
             JAX_PLATFORMS="cpu")
  procs = [subprocess.Popen(
      [sys.executable, "-m", "xmodal.cli", "train", f"--config={config_file}",
       f"--workdir={workdir}", f"--coordinator=127.0.0.1:{port}", "--num_processes=2",
       f"--process_id={i}"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
      text=True) for i in range(2)]
  outputs = []
  try:
    for p in procs:
      outputs.append(p.communicate(timeout=300)[0])
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  for i, p in enumerate(procs):
    assert p.returncode == 0, f"process {i} failed:\n{outputs[i][-3000:]}"
  return outputs


def test_two_processes_match_one_and_resume_on_another_mesh(tmp_path, capfd):
  workdir = str(tmp_path / "multi")
  outputs = _run_two_processes(tmp_path, workdir, steps=6)
  assert "[step 6]" in outputs[0] and "[step 6]" not in outputs[1]   # only process 0 logs
  # XLA's partitioner found a sharding for every op (data x fsdp x model); it warns on
  # stderr where it would replicate a tensor on every device instead.
  for out in outputs:
    assert "Involuntary full rematerialization" not in out

  reference = str(tmp_path / "reference")
  capfd.readouterr()
  train.train(make_tiny_config(**dict(OVERRIDES, **{"train.total_steps": 10})), reference)
  assert "Involuntary full rematerialization" not in capfd.readouterr().err
  expected = _losses(reference)
  two_process = _losses(workdir)
  assert sorted(two_process) == list(range(1, 7))
  np.testing.assert_allclose([two_process[s] for s in range(1, 7)],
                             [expected[s] for s in range(1, 7)], rtol=1e-5)

  # Resume the 2-process checkpoint in this single process on a different mesh.
  resumed_config = make_tiny_config(**dict(
      OVERRIDES, **{"train.total_steps": 10, "mesh.data": 1, "mesh.fsdp": 8, "mesh.model": 1}))
  train.train(resumed_config, workdir)
  resumed = _losses(workdir)
  np.testing.assert_allclose([resumed[s] for s in range(7, 11)],
                             [expected[s] for s in range(7, 11)], rtol=1e-4)


def test_every_leaf_has_the_sharding_the_rules_give():
  from xmodal import optim, parallel
  from xmodal.models import model as model_lib
  config = make_tiny_config(**{"mesh.data": 2, "mesh.fsdp": 2, "mesh.model": 2})
  mesh = parallel.make_mesh(config)
  model, tx = model_lib.MultiTower(config), optim.make_optimizer(config)
  shardings = sharding.state_shardings(model, tx, config, mesh)
  with sharding.context(config, mesh):
    state = jax.jit(train.init_state_fn(model, tx, config), out_shardings=shardings)(
        jax.random.key(0))
  for (path, leaf), want in zip(jax.tree_util.tree_leaves_with_path(state),
                                jax.tree.leaves(shardings)):
    assert leaf.sharding == want, jax.tree_util.keystr(path)
  fc1 = state["params"]["image"]["encoder"]["transformer"]["block_0"]["mlp"]["fc1"]["kernel"]
  assert fc1.sharding.spec == jax.sharding.PartitionSpec("fsdp", "model")
  mu = state["opt_state"][1][0].mu["image"]["encoder"]["transformer"]["block_0"]["mlp"]["fc1"]
  assert mu["kernel"].sharding.spec == jax.sharding.PartitionSpec("fsdp", "model")
  # Each device holds a quarter of that kernel (fsdp=2 x model=2).
  assert fc1.addressable_shards[0].data.size == fc1.size // 4
  # Nothing bigger than 1 KiB is replicated by accident (only norms/biases/scalars are).
  assert sharding.replicated_leaves(state, 1024) == []


def test_replicated_leaves_reports_a_large_replicated_leaf():
  from xmodal import parallel
  mesh = parallel.make_mesh(make_tiny_config())
  big = jax.device_put(np.zeros((64, 64), np.float32), parallel.replicated(mesh))
  small = jax.device_put(np.zeros((4,), np.float32), parallel.replicated(mesh))
  assert sharding.replicated_leaves({"big": big, "small": small}, 1024) == [("['big']", 16384)]


@pytest.mark.parametrize("env, expected", [({}, False)])
def test_single_plain_process_does_not_start_the_distributed_runtime(monkeypatch, env, expected):
  from xmodal import parallel
  for key in ("JAX_COORDINATOR_ADDRESS", "SLURM_NTASKS", "TPU_WORKER_HOSTNAMES"):
    monkeypatch.delenv(key, raising=False)
  assert parallel.initialize_distributed() is expected
  with pytest.raises(ValueError, match="go together"):
    parallel.initialize_distributed("127.0.0.1:1234", None, None)
