"""The device mesh and how arrays are laid out on it.

Axes: `data` (batch), `fsdp` (batch, and later parameter shards) and `model` (tensor
parallel). The batch is split over data x fsdp; parameters are replicated until sharding
rules say otherwise. Each process feeds only its own rows; `global_batch` assembles them
into one global array.
"""

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
