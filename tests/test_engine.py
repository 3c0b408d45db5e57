"""Driver equivalence for every registered objective: dense == gathered == ring in value and
in the gradients w.r.t. the embeddings and the learnable scalars, on 1, 2 and 8 devices,
with tiles that do not divide the per-device batch; and, on 8 devices, with group ids,
with K inputs per example (1-to-K) and with a feature queue. The loop runs over
`objectives.names()`: a new objective is covered without a new test (its module's EXAMPLE
options name the teacher / reference towers tx, ty, ref of `loss_cases.vector_config`)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from xmodal import losses
from xmodal.losses import engine, families, groups, objectives
import loss_cases

MESHES = {1: (1, 1, 1), 2: (2, 1, 1), 8: (4, 2, 1)}
B, D = 40, 16                 # per-device 40, 20, 5 rows; tile 3 never divides them


def _mesh(n):
  return jax.make_mesh(MESHES[n], ("data", "fsdp", "model"),
                       axis_types=(jax.sharding.AxisType.Auto,) * 3, devices=jax.devices()[:n])


def _inputs(name, seed, k=None):
  keys = jax.random.split(jax.random.key(seed), 9)
  y_shape = (B, k, D) if k else (B, D)
  emb = {"x": loss_cases.unit(keys[0], (B, D)), "y": loss_cases.unit(keys[1], y_shape)}
  if groups.is_group(objectives.get(name)):        # a third tower (EXAMPLE: pairs x:y:z)
    emb["z"] = loss_cases.unit(keys[8], (B, D))
  if getattr(objectives.get(name), "VIEWS", False):    # a second view of x (data.views)
    emb["x:view"] = loss_cases.unit(jax.random.fold_in(keys[8], 7), (B, D))
  if getattr(objectives.get(name), "TOKENS", False):   # token features, some padding
    for i, (t, n) in enumerate((("x", 4), ("y", 5))):
      emb[f"{t}:tokens"] = loss_cases.unit(jax.random.fold_in(keys[8], i), (B, n, D))
      emb[f"{t}:mask"] = (jnp.arange(n)[None] < 1 + jnp.arange(B)[:, None] % n).astype(
          jnp.float32)
  extras = {"rng": keys[2], "step": jnp.int32(3),
            "frozen": {"tx": loss_cases.unit(keys[3], (B, D)),
                       "ty": loss_cases.unit(keys[4], y_shape),
                       "ref": loss_cases.unit(keys[5], (B, D))},
            "ema": {name: {"x": loss_cases.unit(keys[6], (B, D)),
                           "y": loss_cases.unit(keys[7], y_shape)}}}
  return emb, extras


PARAMS = {"logit_scale": jnp.log(jnp.float32(9.0)), "logit_bias": jnp.float32(-4.0)}


def _value_and_grads(name, impl, n, extras, emb, **kw):
  config = loss_cases.vector_config(name, impl=impl, batch=B, dim=D, **kw)
  objective = losses.Objective(config, _mesh(n))
  f = jax.jit(jax.value_and_grad(lambda p, e: objective.loss(p, e, extras)[0], argnums=(0, 1)))
  return f(PARAMS, emb)


def _rel(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30)


def _assert_equal(got, want, what):
  assert _rel(got[0], want[0]) <= 1e-5, (what, float(got[0]), float(want[0]))
  got_leaves = jax.tree.leaves(got[1])
  for (path, g), h in zip(jax.tree_util.tree_leaves_with_path(want[1]), got_leaves):
    if np.linalg.norm(np.asarray(g)) == 0:                   # softmax: no bias gradient
      assert np.linalg.norm(np.asarray(h)) == 0, (what, jax.tree_util.keystr(path))
      continue
    assert _rel(h, g) <= 1e-5, (what, jax.tree_util.keystr(path), _rel(h, g))


@functools.lru_cache(maxsize=None)
def _dense(name, shards):
  """The dense reference on the inputs of seed 0; it depends on the mesh only through its
  shard count, which only objectives that draw per shard (SHARD_DRAWS: mixup's partners,
  symile's negatives) read."""
  emb, extras = _inputs(name, seed=0)
  return _value_and_grads(name, "dense", shards, extras, emb)


@pytest.mark.parametrize("name", objectives.names())
@pytest.mark.parametrize("n", [1, 2, 8])
def test_drivers_agree(name, n):
  emb, extras = _inputs(name, seed=0)
  want = _dense(name, n if getattr(objectives.get(name), "SHARD_DRAWS", False) else 1)
  for impl in ("gathered", "ring"):
    _assert_equal(_value_and_grads(name, impl, n, extras, emb), want, (name, impl, n))


def _variants():
  for name in objectives.names():
    module = objectives.get(name)                           # one [B, D] / [B, T, D] per
    group = groups.is_group(module) or getattr(module, "TOKENS", False)   # tower, no queue
    yield pytest.param(name, "groups", id=f"{name}-groups")
    if name != "mixup" and not group:                        # mixes one row per example
      yield pytest.param(name, "k", id=f"{name}-k")
    if objectives.get(name).FAMILY == families.SOFTMAX and not group:
      yield pytest.param(name, "queue", id=f"{name}-queue")


@pytest.mark.parametrize("name, variant", list(_variants()))
def test_drivers_agree_with_groups_k_inputs_and_queues(name, variant):
  emb, extras = _inputs(name, seed=11, k=2 if variant == "k" else None)
  kw = {}
  if variant == "groups":                                    # groups that cross devices
    extras["group"] = jnp.asarray(np.random.RandomState(0).randint(0, 13, B), jnp.int32)
  if variant == "queue":
    kw["queue"] = 2 * B                                      # half filled: masked entries
    extras["queues"] = _queue_after_one_step(name, kw["queue"])
  want = _value_and_grads(name, "dense", 8, extras, emb, **kw)
  for impl in ("gathered", "ring"):
    _assert_equal(_value_and_grads(name, impl, 8, extras, emb, **kw), want, (name, impl))


def _queue_after_one_step(name, size):
  """The term's queues after one step of another batch: half their rows filled."""
  objective = losses.Objective(loss_cases.vector_config(name, batch=B, dim=D, queue=size),
                               _mesh(8))
  params = {**PARAMS, "x": {"w": jnp.zeros(1)}, "y": {"w": jnp.zeros(1)}}
  prepared = objective.init_state(params)["loss"]
  emb, extras = _inputs(name, seed=5)
  _, (_, updates) = objective.loss(PARAMS, emb, {**extras, "queues": prepared["queue"]})
  queues = objective.new_state(prepared, updates)["loss"]["queue"]
  valid = queues[name]["x:y"]["ab"]["meta"]["valid"]
  assert int(valid.sum()) == B and valid.shape == (size,)
  return queues


def test_swap_exchanges_directions():
  """Contrast.swap() scored on (columns, rows) is the same loss."""
  c = objectives.get("softmax").contrast(objectives.default_options("softmax"))
  keys = jax.random.split(jax.random.key(3), 2)
  rows = {"feat": loss_cases.unit(keys[0], (12, 8)), "meta": {"ids": jnp.arange(12) % 5}}
  cols = {"feat": loss_cases.unit(keys[1], (12, 8)), "meta": {"ids": jnp.arange(12) % 5}}
  theta = {"scale": jnp.float32(7.0), "bias": jnp.float32(0.0)}
  c = c.__class__(**{**c.__dict__, "weights": (0.3, 0.7)})
  np.testing.assert_allclose(engine.dense(c.swap(), theta, cols, rows),
                             engine.dense(c, theta, rows, cols), rtol=1e-6)
