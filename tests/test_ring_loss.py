"""The ring (and gathered) losses equal the dense reference in value and in the gradients
w.r.t. x, y, scale and bias, on 1, 2, 4 and 8 devices, with tile sizes that do not divide
the per-device batch, in float32 and bfloat16, with and without multi-positive group ids."""

import os

if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                             " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import itertools  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from xmodal import config as config_lib, default_config, losses  # noqa: E402
from xmodal.losses import ring, targets  # noqa: E402
import loss_reference  # noqa: E402

# (data, fsdp, model) per device count; 8 also appears with a model axis (replicated loss).
MESHES = {1: (1, 1, 1), 2: (2, 1, 1), 4: (2, 2, 1), 8: (4, 2, 1)}
BATCH, DIM = 40, 16        # per-device batch 40, 20, 10, 5: tile 3 never divides it


def _mesh(shape):
  n = int(np.prod(shape))
  if len(jax.devices()) < n:
    pytest.skip(f"needs {n} devices, have {len(jax.devices())}")
  return jax.make_mesh(shape, ("data", "fsdp", "model"),
                       axis_types=(jax.sharding.AxisType.Auto,) * 3, devices=jax.devices()[:n])


def _unit(key, shape):
  x = jax.random.normal(key, shape)
  return x / jnp.linalg.norm(x, axis=1, keepdims=True)


def _inputs(seed=0, batch=BATCH):
  kx, ky = jax.random.split(jax.random.key(seed))
  return _unit(kx, (batch, DIM)), _unit(ky, (batch, DIM)), jnp.float32(9.0), jnp.float32(-4.0)


def _value_and_grads(f, x, y, scale, bias):
  return jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2, 3)))(x, y, scale, bias)


def _rel(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30)


def _assert_close(got, want, tol, name):
  (gv, gg), (wv, wg) = got, want
  assert _rel(gv, wv) <= tol, (name, "value", float(gv), float(wv))
  for label, a, b in zip(("x", "y", "scale", "bias"), gg, wg):
    if np.linalg.norm(np.asarray(b, np.float64)) == 0:       # softmax: no bias gradient
      assert np.linalg.norm(np.asarray(a, np.float64)) == 0, (name, label)
      continue
    assert _rel(a, b) <= tol, (name, label, _rel(a, b))


@pytest.mark.parametrize("name", ["softmax", "sigmoid"])
@pytest.mark.parametrize("n", [1, 2, 4, 8])
def test_sharded_impls_match_dense_fp32(name, n):
  mesh = _mesh(MESHES[n])
  x, y, scale, bias = _inputs(n)
  want = _value_and_grads(lambda *a: losses.dense_loss(name, *a), x, y, scale, bias)
  for impl, tile in [("gathered", None), ("ring", 3), ("ring", 256)]:
    f = losses.pair_loss_fn(name, impl, mesh, tile_size=tile or 256)
    _assert_close(_value_and_grads(f, x, y, scale, bias), want, 1e-5, (impl, tile))


@pytest.mark.parametrize("name", ["softmax", "sigmoid"])
def test_ring_with_model_axis_and_odd_tiles(name):
  mesh = _mesh((2, 2, 2))                      # the loss is replicated over `model`
  x, y, scale, bias = _inputs(3)
  want = _value_and_grads(lambda *a: losses.dense_loss(name, *a), x, y, scale, bias)
  for tile in (1, 7, 10, 11):                  # per-device batch 10
    f = ring.ring_loss(name, mesh, tile_size=tile)
    _assert_close(_value_and_grads(f, x, y, scale, bias), want, 1e-5, tile)


@pytest.mark.parametrize("name", ["softmax", "sigmoid"])
@pytest.mark.parametrize("n", [1, 2, 4, 8])
def test_sharded_impls_match_dense_bf16(name, n):
  """bf16 embeddings: ring (float32 accumulation) vs dense on the same values in float32;
  gathered (bf16 logits, like dense on bf16) vs dense on bf16; both to 1e-2."""
  mesh = _mesh(MESHES[n])
  x, y, scale, bias = _inputs(7)
  xb, yb = x.astype(jnp.bfloat16), y.astype(jnp.bfloat16)
  dense = lambda *a: losses.dense_loss(name, *a)
  want32 = _value_and_grads(dense, xb.astype(jnp.float32), yb.astype(jnp.float32), scale, bias)
  got = _value_and_grads(ring.ring_loss(name, mesh, tile_size=3), xb, yb, scale, bias)
  assert got[1][0].dtype == jnp.bfloat16 and got[1][1].dtype == jnp.bfloat16
  _assert_close(got, want32, 1e-2, "ring bf16")
  want16 = _value_and_grads(dense, xb, yb, scale, bias)
  _assert_close(got, want16, 1e-2, "ring vs dense bf16")
  gathered = _value_and_grads(losses.pair_loss_fn(name, "gathered", mesh), xb, yb, scale, bias)
  _assert_close(gathered, want16, 1e-2, "gathered bf16")


@pytest.mark.parametrize("name", ["softmax", "sigmoid"])
@pytest.mark.parametrize("n", [1, 8])
def test_ring_confident_regime_matches_float64(name, n):
  """Scale 100, bias -16.5, mean loss ~0.02 (tests/loss_reference.py): the ring's value and
  gradients stay within 1e-5 of the float64 formula, with tiles that do not divide the
  per-device batch."""
  mesh = _mesh((n, 1, 1))
  x, y = loss_reference.confident_inputs(name)
  scale, bias = loss_reference.CONFIDENT["scale"], loss_reference.CONFIDENT["bias"]
  want = loss_reference.loss_and_grads(name, x, y, scale, bias)
  value, grads = _value_and_grads(ring.ring_loss(name, mesh, tile_size=3), jnp.asarray(x),
                                  jnp.asarray(y), jnp.float32(scale), jnp.float32(bias))
  for label, got, ref in zip(("value", "x", "y", "scale", "bias"), (value, *grads), want):
    if label == "bias" and name == "softmax":
      assert float(got) == 0.0
      continue
    assert _rel(got, ref) <= 1e-5, (label, _rel(got, ref))


def _brute_force(name, x, y, scale, bias, ids):
  """Multi-positive losses written as loops in float64 numpy."""
  x, y, ids = np.asarray(x, np.float64), np.asarray(y, np.float64), np.asarray(ids)
  s = float(scale) * x @ y.T
  b = len(x)
  total = 0.0
  if name == "softmax":
    for logits in (s, s.T):
      for i in range(b):
        pos = [j for j in range(b) if ids[j] == ids[i]]
        lse = np.log(np.sum(np.exp(logits[i] - logits[i].max()))) + logits[i].max()
        total += 0.5 * np.mean([lse - logits[i, j] for j in pos])
  else:
    for i, j in itertools.product(range(b), range(b)):
      z = 1.0 if ids[i] == ids[j] else -1.0
      total += np.log1p(np.exp(-z * (s[i, j] + float(bias))))
  return total / b


@pytest.mark.parametrize("name", ["softmax", "sigmoid"])
def test_dense_multi_positive_matches_brute_force(name):
  x, y, scale, bias = _inputs(11, batch=12)
  ids = jnp.array([0, 1, 1, 2, 3, 3, 3, 4, 5, 6, 6, 7])
  got = losses.dense_loss(name, x, y, scale, bias, ids=ids)
  np.testing.assert_allclose(got, _brute_force(name, x, y, scale, bias, ids), rtol=1e-5)
  # unique ids reduce to the usual diagonal loss
  np.testing.assert_allclose(
      losses.dense_loss(name, x, y, scale, bias, ids=jnp.arange(12) * 3),
      losses.dense_loss(name, x, y, scale, bias), rtol=1e-6)


@pytest.mark.parametrize("name", ["softmax", "sigmoid"])
@pytest.mark.parametrize("n", [2, 8])
def test_ring_multi_positive_matches_dense(name, n):
  mesh = _mesh(MESHES[n])
  x, y, scale, bias = _inputs(5)
  ids = jnp.asarray(np.random.RandomState(n).randint(0, 9, BATCH), jnp.int32)  # groups span devices
  want = _value_and_grads(lambda *a: losses.dense_loss(name, *a, ids=ids), x, y, scale, bias)
  f = ring.ring_loss(name, mesh, tile_size=3)
  got = _value_and_grads(lambda *a: f(*a, ids=ids), x, y, scale, bias)
  _assert_close(got, want, 1e-5, "ids")


def _soft_weights(row_ids, col_ids):
  """Soft targets: 1 for the same id, 0.25 for neighbouring ids (symmetric)."""
  d = jnp.abs(row_ids[:, None] - col_ids[None, :])
  return jnp.where(d == 0, 1.0, jnp.where(d == 1, 0.25, 0.0))


@pytest.mark.parametrize("name", ["softmax", "sigmoid"])
def test_ring_soft_targets_match_dense(name):
  mesh = _mesh(MESHES[4])
  x, y, scale, bias = _inputs(9)
  ids = jnp.asarray(np.random.RandomState(1).randint(0, 12, BATCH), jnp.int32)
  want = _value_and_grads(
      lambda *a: targets.dense_loss_with_ids(name, *a, ids=ids, weight_fn=_soft_weights),
      x, y, scale, bias)
  f = ring.ring_loss(name, mesh, tile_size=7, weight_fn=_soft_weights)
  got = _value_and_grads(lambda *a: f(*a, ids=ids), x, y, scale, bias)
  _assert_close(got, want, 1e-5, "soft")


def test_ring_objective_from_config():
  """loss.impl='ring' through the config and make_objective, scale through logit_scale."""
  mesh = _mesh(MESHES[4])
  c = default_config.get_config()
  c.loss.impl, c.loss.tile_size, c.batch_size, c.eval.batch_size = "ring", 7, BATCH, 64
  config_lib.validate(c, 4)
  x, y, _, _ = _inputs(2)
  params = {"logit_scale": jnp.float32(2.3)}
  ring_obj = losses.make_objective(c, mesh)
  c.loss.impl = "dense"
  dense_obj = losses.make_objective(c, mesh)
  grads = [jax.jit(jax.grad(lambda p, e: o(p, e)[0], argnums=(0, 1)))(
      params, {"image": x, "text": y}) for o in (ring_obj, dense_obj)]
  for a, b in zip(jax.tree.leaves(grads[0]), jax.tree.leaves(grads[1])):
    assert _rel(a, b) <= 1e-5


def test_config_rejects_bad_tile_size():
  c = default_config.get_config()
  c.loss.impl, c.loss.tile_size = "ring", 0
  with pytest.raises(config_lib.ConfigError, match="config.loss.tile_size"):
    config_lib.validate(c, 1)


def _temp_bytes(name, impl, n, local, tile=64, dim=32):
  mesh = _mesh((n, 1, 1))
  f = losses.pair_loss_fn(name, impl, mesh, tile_size=tile)
  spec = jax.ShapeDtypeStruct((n * local, dim), jnp.float32)
  scalar = jax.ShapeDtypeStruct((), jnp.float32)
  compiled = jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2, 3))).lower(
      spec, spec, scalar, scalar).compile()
  return compiled.memory_analysis().temp_size_in_bytes


@pytest.mark.parametrize("name", ["softmax", "sigmoid"])
def test_ring_memory_does_not_grow_with_ring_length(name):
  """Same per-device batch on 4 and 8 devices: the ring's temp memory stays flat, the
  gathered [b, B] block grows 2x. (On 2 devices XLA unrolls the one-trip ring loop and
  lays buffers out differently, so that count is not compared.)"""
  local = 256
  ring4, ring8 = _temp_bytes(name, "ring", 4, local), _temp_bytes(name, "ring", 8, local)
  gathered8 = _temp_bytes(name, "gathered", 8, local)
  assert ring8 <= ring4 * 1.05 + 4096, (ring4, ring8)
  # y block and dy accumulator, each with its ppermute receive buffer, and a few [b, tile]
  # temporaries (logits, probabilities, gradient), plus slack for [b] statistics
  bound = 4 * (4 * local * 32 + 3 * local * 64) + 16384
  assert ring8 <= bound, (ring8, bound)
  assert ring8 < gathered8, (ring8, gathered8)
