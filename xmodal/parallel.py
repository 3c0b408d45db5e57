"""The device mesh and how arrays are laid out on it.

Axes: `data` (batch), `fsdp` (batch, and later parameter shards) and `model` (tensor
parallel). The batch is split over data x fsdp; parameters are replicated until sharding
rules say otherwise. Each process feeds only its own rows; `global_batch` assembles them
into one global array.
"""

import os

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from xmodal import config as config_lib

AXES = ("data", "fsdp", "model")
BATCH_AXES = ("data", "fsdp")


def make_mesh(config, devices=None) -> jax.sharding.Mesh:
  """A mesh over all devices (of all processes) with the config's axis sizes (-1 = rest)."""
  devices = jax.devices() if devices is None else devices
  shape = config_lib.mesh_shape(config, len(devices))
  return jax.make_mesh(tuple(shape[a] for a in AXES), AXES,
                       axis_types=(jax.sharding.AxisType.Auto,) * len(AXES), devices=devices)


def batch_sharding(mesh) -> NamedSharding:
  """Leading (batch) axis split over data x fsdp, the rest replicated."""
  return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def global_batch(mesh, local: dict) -> dict:
  """Per-process numpy rows {key: [b_local, ...]} -> global jax arrays [B, ...], B = b_local x
  process count, split over the batch axes."""
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in local.items()}


def sum_over_processes(value):
  """The sum of an integer (or an int vector, elementwise) over all processes (a
  collective: every process must call it)."""
  if jax.process_count() == 1:
    return int(value) if np.ndim(value) == 0 else np.asarray(value, np.int64)
  from jax.experimental import multihost_utils
  total = np.sum(multihost_utils.process_allgather(np.asarray(value, np.int64)), axis=0)
  return int(total) if np.ndim(value) == 0 else total


def initialize_distributed(coordinator: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None) -> bool:
  """Starts JAX's distributed runtime when this is one process of several.

  Explicit arguments win; otherwise JAX detects the cluster itself on Cloud TPU pods and
  under SLURM (srun with more than one task), or from JAX_COORDINATOR_ADDRESS,
  JAX_NUM_PROCESSES and JAX_PROCESS_ID. A single plain process does nothing. Returns True
  if the runtime was started. Call before anything else touches JAX devices.
  """
  env = os.environ
  if coordinator or num_processes or process_id is not None:
    if not (coordinator and num_processes and process_id is not None):
      raise ValueError("--coordinator, --num_processes and --process_id go together")
    jax.distributed.initialize(coordinator, num_processes, process_id)
    return True
  if "JAX_COORDINATOR_ADDRESS" in env:
    jax.distributed.initialize(env["JAX_COORDINATOR_ADDRESS"],
                               int(env["JAX_NUM_PROCESSES"]), int(env["JAX_PROCESS_ID"]))
    return True
  slurm = int(env.get("SLURM_NTASKS", "1")) > 1 and "SLURM_STEP_ID" in env
  tpu_pod = len([h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]) > 1
  if slurm or tpu_pod:
    jax.distributed.initialize()     # cluster auto-detection
    return True
  return False
