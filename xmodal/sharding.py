"""Where parameters and optimizer state live on the mesh.

Parameters carry logical axis names (see xmodal/models/layers.py); `config.sharding.rules`
maps each name to mesh axes. The defaults give fully sharded data parallelism (`embed` over
`fsdp`: parameters and Adam moments split over the fsdp axis, gathered layer by layer in
the step) and tensor-parallel attention and MLP (`heads`, `mlp`, `vocab` over `model`).
With fsdp = model = 1 everything is replicated: plain data parallelism.

State is born sharded: shapes come from `jax.eval_shape`, shardings from the rules, and
`jax.jit(init, out_shardings=...)` creates every shard on its own device, so no host ever
holds the whole model.
"""

import contextlib

import flax.linen as nn
import jax
import optax

from xmodal import parallel
from xmodal.models import model as model_lib


def rules(config) -> tuple:
  """config.sharding.rules as flax logical-axis rules: ((name, mesh axes or None), ...)."""
  out = []
  for name, axes in config.sharding.rules:
    out.append((name, tuple(axes) if isinstance(axes, (list, tuple)) else axes))
  return tuple(out)


@contextlib.contextmanager
def context(config, mesh):
  """Within it, logical activation constraints resolve against `mesh` by the rules."""
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules(config)):
    yield


def param_shardings(model, config, mesh):
  """A pytree of NamedSharding, one per parameter, from the logical axes and the rules."""
  specs = nn.get_partition_spec(model_lib.abstract_params(model, config))
  return nn.logical_to_mesh_sharding(specs, mesh, rules(config))


def state_shardings(model, tx, config, mesh):
  """Shardings of the train state {params, opt_state, step, [loss]}: optimizer moments
  and EMA copies follow their parameter; feature queues are split like a batch; counters
  and other scalars are replicated."""
  params = param_shardings(model, config, mesh)
  abstract_params = model_lib.unbox(model_lib.abstract_params(model, config))
  abstract_opt = jax.eval_shape(tx.init, abstract_params)
  replicated = parallel.replicated(mesh)
  if config.train.get("frozen"):
    # optax.multi_transform keeps masked copies of the params tree (frozen leaves are
    # MaskedNodes), which tree_map_params cannot follow: match leaves by key path instead.
    opt = _shardings_by_path(abstract_opt, params, replicated)
  else:
    opt = optax.tree_utils.tree_map_params(
        tx, lambda _, sharding: sharding, abstract_opt, params,
        transform_non_params=lambda _: replicated)
  from xmodal.losses import state as loss_state   # noqa: PLC0415 (keeps this import light)
  return {"params": params, "opt_state": opt, "step": replicated,
          **loss_state.LossState.from_config(config).shardings(params, mesh)}


def _shardings_by_path(abstract_opt, param_shardings, replicated):
  """Each optimizer-state leaf whose dict-key path ends with a parameter's path takes that
  parameter's sharding; every other leaf (counters, scalars) is replicated."""
  by_path = {tuple(k.key for k in path): sh for path, sh in
             jax.tree_util.tree_leaves_with_path(param_shardings)}

  def pick(path, _):
    keys = tuple(k.key for k in path if isinstance(k, jax.tree_util.DictKey))
    for i in range(len(keys)):
      if keys[i:] in by_path:
        return by_path[keys[i:]]
    return replicated

  return jax.tree_util.tree_map_with_path(pick, abstract_opt)


def replicated_leaves(state, min_bytes: int) -> list[tuple[str, int]]:
  """(name, bytes) of every leaf of `state` (arrays) that is fully replicated over a mesh of
  more than one device while larger than `min_bytes`: large things replicated by accident."""
  out = []
  for path, leaf in jax.tree_util.tree_leaves_with_path(state):
    nbytes = leaf.size * leaf.dtype.itemsize
    sharding = leaf.sharding
    if nbytes >= min_bytes and len(sharding.device_set) > 1 and sharding.is_fully_replicated:
      out.append((jax.tree_util.keystr(path), nbytes))
  return out
