"""Sharded losses equal the single-device dense formula, in value and gradient."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from xmodal import losses, parallel
import loss_reference
from tiny import make_tiny_config


def _unit(key, shape):
  x = jax.random.normal(key, shape)
  return x / jnp.linalg.norm(x, axis=1, keepdims=True)


def _mesh(data, fsdp):
  config = make_tiny_config(**{"mesh.data": data, "mesh.fsdp": fsdp})
  return parallel.make_mesh(config, jax.devices()[:data * fsdp])


def _reference_softmax(x, y, scale):
  """CLIP's formula written plainly with numpy (float64)."""
  logits = scale * x @ y.T
  def ce(l):
    l = l - l.max(axis=1, keepdims=True)
    return np.mean(np.log(np.exp(l).sum(axis=1)) - np.diag(l))
  return 0.5 * (ce(logits) + ce(logits.T))


def _reference_sigmoid(x, y, scale, bias):
  logits = scale * x @ y.T + bias
  labels = 2 * np.eye(len(x)) - 1
  return np.sum(np.log1p(np.exp(-labels * logits))) / len(x)


def test_dense_matches_plain_formula():
  x, y = _unit(jax.random.key(0), (24, 16)), _unit(jax.random.key(1), (24, 16))
  xn, yn = np.asarray(x, np.float64), np.asarray(y, np.float64)
  np.testing.assert_allclose(losses.dense_loss("softmax", x, y, 14.0),
                             _reference_softmax(xn, yn, 14.0), rtol=1e-5)
  np.testing.assert_allclose(losses.dense_loss("sigmoid", x, y, 10.0, -10.0),
                             _reference_sigmoid(xn, yn, 10.0, -10.0), rtol=1e-5)


def _assert_same_value_and_grads(name, got, want):
  """(value, grads for x, y, scale, bias) of the sharded loss == the dense one, to 1e-5;
  softmax has no bias, so both bias gradients are exactly 0."""
  (value_g, grads_g), (value_d, grads_d) = got, want
  np.testing.assert_allclose(value_g, value_d, rtol=1e-5)
  for g_sharded, g_dense, what in zip(grads_g, grads_d, ["x", "y", "scale", "bias"]):
    if name == "softmax" and what == "bias":
      assert float(g_dense) == 0.0 and float(g_sharded) == 0.0
      continue
    np.testing.assert_allclose(np.asarray(g_sharded), np.asarray(g_dense), rtol=1e-5,
                               atol=1e-5 * float(jnp.max(jnp.abs(g_dense))), err_msg=what)


@pytest.mark.parametrize("name", ["softmax", "sigmoid"])
@pytest.mark.parametrize("impl, devices", [("dense", 1), ("gathered", 1), ("gathered", 8)])
@pytest.mark.parametrize("with_ids", [False, True])
def test_confident_regime_matches_float64(name, impl, devices, with_ids):
  """Scale 100, bias -16.5, mean loss ~0.02: value and gradients (x, y, scale, bias) within
  1e-5 (relative, norm-wise) of the float64 formula, with and without group ids (unique
  ids take the multi-positive path, losses/targets.py, which must agree)."""
  x, y = loss_reference.confident_inputs(name)
  scale, bias = loss_reference.CONFIDENT["scale"], loss_reference.CONFIDENT["bias"]
  want = loss_reference.loss_and_grads(name, x, y, scale, bias)
  assert 0.01 < want[0] < 0.05, want[0]                 # the regime the test is about
  ids = jnp.arange(len(x), dtype=jnp.int32) * 5 if with_ids else None
  f = losses.pair_loss_fn(name, impl, _mesh(devices, 1))
  value, grads = jax.jit(jax.value_and_grad(lambda *a: f(*a, ids=ids), argnums=(0, 1, 2, 3)))(
      jnp.asarray(x), jnp.asarray(y), jnp.float32(scale), jnp.float32(bias))
  for label, got, ref in zip(("value", "x", "y", "scale", "bias"), (value, *grads), want):
    if label == "bias" and name == "softmax":
      assert float(got) == 0.0
      continue
    assert loss_reference.rel(got, ref) <= 1e-5, (label, loss_reference.rel(got, ref))


@pytest.mark.parametrize("name", ["softmax", "sigmoid"])
@pytest.mark.parametrize("data, fsdp", [(8, 1), (4, 2), (2, 1)])
def test_gathered_equals_dense_values_and_gradients(name, data, fsdp):
  batch, dim = 64, 32
  x, y = _unit(jax.random.key(2), (batch, dim)), _unit(jax.random.key(3), (batch, dim))
  scale, bias = jnp.float32(12.5), jnp.float32(-6.0)
  mesh = _mesh(data, fsdp)
  sharded = losses.gathered_loss(name, mesh)
  dense = lambda *a: losses.dense_loss(name, *a)  # noqa: E731
  value_d, grads_d = jax.value_and_grad(dense, argnums=(0, 1, 2, 3))(x, y, scale, bias)
  value_g, grads_g = jax.jit(jax.value_and_grad(sharded, argnums=(0, 1, 2, 3)))(
      x, y, scale, bias)
  _assert_same_value_and_grads(name, (value_g, grads_g), (value_d, grads_d))


def test_gathered_sees_negatives_from_every_device():
  """If a device scored only its own rows, swapping rows between devices would not change
  the loss; with all-device negatives it does, exactly as the dense loss does."""
  mesh = _mesh(8, 1)
  x, y = _unit(jax.random.key(4), (16, 8)), _unit(jax.random.key(5), (16, 8))
  sharded = jax.jit(losses.gathered_loss("softmax", mesh))
  # Make device 1's texts (rows 2-3) near copies of device 0's images: hard negatives.
  y2 = y.at[2:4].set(x[0:2])
  dense_change = float(losses.dense_loss("softmax", x, y2, 20.0) -
                       losses.dense_loss("softmax", x, y, 20.0))
  sharded_change = float(sharded(x, y2, 20.0, 0.0) - sharded(x, y, 20.0, 0.0))
  assert dense_change > 0.1
  np.testing.assert_allclose(sharded_change, dense_change, rtol=1e-4)


def test_objective_sums_over_modality_pairs():
  config = make_tiny_config(**{"loss.impl": "dense"})
  mesh = _mesh(1, 1)
  emb = {m: _unit(jax.random.key(i), (8, 4)) for i, m in enumerate(["a", "b", "c"])}
  with config.unlocked():
    config.towers = {"a": config.towers.image, "b": config.towers.text, "c": config.towers.text}
  objective = losses.make_objective(config, mesh)
  params = {"logit_scale": jnp.log(10.0)}
  total, per_pair = objective(params, emb)
  assert sorted(per_pair) == ["loss/a-b", "loss/a-c", "loss/b-c"]
  expected = np.mean([losses.dense_loss("softmax", emb[p], emb[q], 10.0)
                      for p, q in [("a", "b"), ("a", "c"), ("b", "c")]])
  np.testing.assert_allclose(total, expected, rtol=1e-6)


def test_objective_uses_the_scale_as_it_is_with_its_whole_gradient():
  """No clip in the forward pass (loss.max_scale bounds the parameter after each optimizer
  step, optim.clamp_scale): a scale above max_scale is used as it is, and at the bound the
  gradient w.r.t. logit_scale is d loss / d scale * scale, not half of it (a jnp.minimum
  in the forward pass splits the tie)."""
  config = make_tiny_config(**{"loss.impl": "dense", "loss.max_scale": 50.0})
  objective = losses.make_objective(config, _mesh(1, 1))
  x, y = _unit(jax.random.key(6), (8, 4)), _unit(jax.random.key(7), (8, 4))
  emb = {"image": x, "text": y}
  above, _ = objective({"logit_scale": jnp.log(500.0)}, emb)
  np.testing.assert_allclose(above, losses.dense_loss("softmax", x, y, 500.0), rtol=1e-6)
  at_bound = jnp.float32(np.log(50.0))
  got = jax.grad(lambda p: objective({"logit_scale": p}, emb)[0])(at_bound)
  scale = jnp.exp(at_bound)
  want = jax.grad(lambda t: losses.dense_loss("softmax", x, y, t))(scale) * scale
  assert abs(float(want)) > 1e-3
  np.testing.assert_allclose(got, want, rtol=1e-5)


def _groups_across_devices(batch, devices, seed):
  """Group ids [batch] with groups of 1 to 4 rows, shuffled so that several groups have
  rows on different devices (checked), plus one group spanning the whole batch's ends."""
  rng = np.random.RandomState(seed)
  ids = np.repeat(np.arange(batch), rng.randint(1, 5, batch))[:batch]
  ids = rng.permutation(ids)
  ids[0] = ids[-1] = batch + 7                   # the first and the last device share a group
  per_device = batch // devices
  crossing = [g for g in np.unique(ids)
              if len(set(np.flatnonzero(ids == g) // per_device)) > 1]
  assert len(crossing) >= 3, crossing
  return jnp.asarray(ids, jnp.int32)


@pytest.mark.parametrize("name", ["softmax", "sigmoid"])
@pytest.mark.parametrize("data, fsdp", [(8, 1), (4, 2)])
def test_gathered_with_group_ids_equals_dense(name, data, fsdp):
  """Multi-positive: ids gathered with the embeddings; groups crossing devices."""
  batch, dim = 48, 16
  x, y = _unit(jax.random.key(8), (batch, dim)), _unit(jax.random.key(9), (batch, dim))
  scale, bias = jnp.float32(11.0), jnp.float32(-5.0)
  ids = _groups_across_devices(batch, data * fsdp, seed=data)
  sharded = losses.gathered_loss(name, _mesh(data, fsdp))
  args = (0, 1, 2, 3)
  value_d, grads_d = jax.value_and_grad(
      lambda *a: losses.dense_loss(name, *a, ids=ids), argnums=args)(x, y, scale, bias)
  value_g, grads_g = jax.jit(jax.value_and_grad(
      lambda *a: sharded(*a, ids=ids), argnums=args))(x, y, scale, bias)
  _assert_same_value_and_grads(name, (value_g, grads_g), (value_d, grads_d))
  # The ids matter: the same rows without groups give another loss.
  assert abs(float(sharded(x, y, scale, bias)) - float(value_d)) > 1e-2


@pytest.mark.parametrize("impl", ["dense", "gathered", "ring"])
def test_objective_takes_group_ids(impl):
  """make_objective(params, embeddings, ids) = the dense multi-positive reference, averaged
  over the modality pairs; without ids it is the plain pair loss."""
  config = make_tiny_config(**{"loss.impl": impl, "loss.name": "sigmoid",
                               "loss.tile_size": 5})
  with config.unlocked():
    config.towers = {"a": config.towers.image, "b": config.towers.text, "c": config.towers.text}
  mesh = _mesh(4, 2)
  emb = {m: _unit(jax.random.key(10 + i), (32, 8)) for i, m in enumerate(["a", "b", "c"])}
  ids = _groups_across_devices(32, 8, seed=3)
  params = {"logit_scale": jnp.log(12.0), "logit_bias": jnp.float32(-3.0)}
  objective = jax.jit(losses.make_objective(config, mesh))
  total, per_pair = objective(params, emb, ids)
  pairs = [("a", "b"), ("a", "c"), ("b", "c")]
  for p, q in pairs:
    np.testing.assert_allclose(
        per_pair[f"loss/{p}-{q}"],
        losses.dense_loss("sigmoid", emb[p], emb[q], 12.0, -3.0, ids=ids), rtol=1e-5)
  np.testing.assert_allclose(total, np.mean([per_pair[f"loss/{p}-{q}"] for p, q in pairs]),
                             rtol=1e-6)
  plain, _ = objective(params, emb)
  np.testing.assert_allclose(plain, np.mean(
      [losses.dense_loss("sigmoid", emb[p], emb[q], 12.0, -3.0) for p, q in pairs]), rtol=1e-5)
  assert abs(float(plain) - float(total)) > 1e-2
