"""The micro-batched (GradCache) train step equals the full-batch step: same loss, same
gradient, same params after one update."""

import os

if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                             " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from tiny import make_tiny_config  # noqa: E402
from xmodal import config as config_lib, losses, microbatch, optim  # noqa: E402
from xmodal import parallel, train  # noqa: E402
from xmodal.models import model as model_lib  # noqa: E402


def _config(**overrides):
  return make_tiny_config(**{"data.context_length": 12, "optim.warmup_steps": 0,
                             "train.total_steps": 10, **overrides})


def _batch(config, seed=0, groups=False):
  """Random images and tokens; groups=True adds "group" ids with groups of 1 to 3 rows (as
  data.captions="all" gives), scattered over the batch so that they cross devices and
  micro-batches."""
  rng = np.random.RandomState(seed)
  b, s = config.batch_size, config.data.image_size
  batch = {"image": rng.randint(0, 256, (b, s, s, 3)).astype(np.uint8),
           "text": rng.randint(1, 200, (b, config.data.context_length)).astype(np.int32)}
  if groups:
    batch["group"] = rng.permutation(
        np.repeat(np.arange(b), rng.randint(1, 4, b))[:b]).astype(np.int32)
  return batch


def _rel(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30)


def _step_results(config, devices, microbatches, groups=False):
  mesh = parallel.make_mesh(config, devices)
  model = model_lib.MultiTower(config)
  tx = optim.make_optimizer(config)
  objective = losses.make_objective(config, mesh)
  state = train.init_state_fn(model, tx, config)(jax.random.key(0))
  state = jax.device_put(state, parallel.replicated(mesh))
  batch = parallel.global_batch(mesh, _batch(config, groups=groups))
  step = train.make_train_step(model, tx, objective, optim.schedule(config), microbatches)
  grad_fn = (microbatch.value_and_grad(model, objective, microbatches) if microbatches > 1 else
             lambda p, b, ids: jax.value_and_grad(
                 lambda p: objective(p, model.apply({"params": p}, b), ids), has_aux=True)(p))

  @jax.jit
  def step_and_grads(state, batch):   # one compilation for both
    inputs = {k: v for k, v in batch.items() if k != "group"}
    if microbatches > 1:
      (loss, _), grads = grad_fn(state["params"], inputs, None, batch.get("group"))
    else:
      (loss, _), grads = grad_fn(state["params"], inputs, batch.get("group"))
    new_state, metrics = step(state, batch)
    return new_state["params"], metrics, loss, grads

  return step_and_grads(state, batch)


@pytest.mark.parametrize("loss_name,impl,n,k,groups", [
    ("softmax", "gathered", 4, 4, False),
    ("softmax", "ring", 8, 2, False),
    ("sigmoid", "ring", 2, 8, False),
    ("softmax", "gathered", 8, 2, True),
])
def test_microbatched_step_equals_full_batch(loss_name, impl, n, k, groups):
  if len(jax.devices()) < n:
    pytest.skip(f"needs {n} devices")
  config = _config(**{"loss.name": loss_name, "loss.impl": impl, "loss.tile_size": 3,
                      "mesh.data": n})
  _check_equal(config, n, k, groups)


def test_microbatched_step_with_token_features_equals_full_batch():
  """FILIP: the towers' token features and masks go through GradCache like embeddings."""
  config = _config(**{"loss.name": "filip", "loss.impl": "ring", "loss.tile_size": 3,
                      "mesh.data": 2, "towers.image.tokens": True, "towers.text.tokens": True})
  _check_equal(config, 2, 2, False)


def _check_equal(config, n, k, groups):
  config_lib.validate(config, n)
  devices = jax.devices()[:n]
  full_params, full_metrics, full_loss, full_grads = _step_results(config, devices, 1, groups)
  mb_params, mb_metrics, mb_loss, mb_grads = _step_results(config, devices, k, groups)
  np.testing.assert_allclose(mb_loss, full_loss, rtol=1e-6)
  np.testing.assert_allclose(mb_metrics["loss"], full_metrics["loss"], rtol=1e-6)
  for path, g in jax.tree_util.tree_leaves_with_path(full_grads):
    g_mb = _get(mb_grads, path)
    assert _rel(g_mb, g) <= 1e-5, (jax.tree_util.keystr(path), _rel(g_mb, g))
  # Params after one AdamW step. Adam's first update is ~ lr * g / (|g| + eps) per element,
  # which amplifies float summation-order noise on near-zero gradients; so the per-element
  # bound is a small fraction of one step (lr), and the update as a whole must agree to 1e-3
  # (the gradients themselves agree to 1e-5, checked above).
  lr = float(optim.schedule(config)(0))
  old = jax.device_get(_initial_params(config))
  for path, p in jax.tree_util.tree_leaves_with_path(full_params):
    p_mb, p0 = np.asarray(_get(mb_params, path)), np.asarray(_get(old, path))
    np.testing.assert_allclose(p_mb, p, rtol=1e-5, atol=1e-2 * lr,
                               err_msg=jax.tree_util.keystr(path))
    assert _rel(p_mb - p0, np.asarray(p) - p0) <= 1e-3, (jax.tree_util.keystr(path),
                                                         _rel(p_mb - p0, np.asarray(p) - p0))


def _initial_params(config):
  model = model_lib.MultiTower(config)
  return model_lib.unbox(model.init(jax.random.key(0), model_lib.dummy_inputs(config))["params"])


def _get(tree, path):
  for key in path:
    tree = tree[key.key]
  return tree


def test_split_merge_roundtrip_keeps_row_order():
  x = {"a": jnp.arange(24).reshape(12, 2)}
  parts = microbatch.split(x, 3)
  assert parts["a"].shape == (3, 4, 2)
  np.testing.assert_array_equal(parts["a"][1, :, 0], [2, 8, 14, 20])   # rows 1, 4, 7, 10
  np.testing.assert_array_equal(microbatch.merge(parts)["a"], x["a"])


def test_config_rejects_microbatches_not_dividing_shard():
  c = _config(**{"train.microbatches": 3, "mesh.data": 4})   # 32 / 4 = 8 rows per shard
  with pytest.raises(config_lib.ConfigError, match="config.train.microbatches"):
    config_lib.validate(c, 4)
  c.train.microbatches = 0
  with pytest.raises(config_lib.ConfigError, match="config.train.microbatches"):
    config_lib.validate(c, 4)
  c.train.microbatches = 8
  config_lib.validate(c, 4)


def test_train_step_feeds_the_batch_group_to_the_objective():
  """The step's loss with batch["group"] is the dense multi-positive loss of the towers'
  embeddings on 8 devices (not the loss without groups)."""
  config = _config(**{"loss.name": "sigmoid", "loss.impl": "ring", "loss.tile_size": 3})
  mesh = parallel.make_mesh(config, jax.devices())
  model = model_lib.MultiTower(config)
  tx = optim.make_optimizer(config)
  step = jax.jit(train.make_train_step(model, tx, losses.make_objective(config, mesh),
                                       optim.schedule(config)))
  state = jax.device_put(train.init_state_fn(model, tx, config)(jax.random.key(0)),
                         parallel.replicated(mesh))
  host = _batch(config, seed=1, groups=True)
  assert len(np.unique(host["group"])) < config.batch_size / 1.5      # real groups
  _, metrics = step(state, parallel.global_batch(mesh, host))
  inputs = {k: v for k, v in host.items() if k != "group"}
  z = jax.jit(lambda p, b: model.apply({"params": p}, b, train=True, rngs={
      "dropout": jax.random.fold_in(jax.random.key(0), 0)}))(state["params"], inputs)
  scale, bias = jnp.exp(state["params"]["logit_scale"]), state["params"]["logit_bias"]
  want = losses.dense_loss("sigmoid", z["image"], z["text"], scale, bias, ids=host["group"])
  np.testing.assert_allclose(metrics["loss"], want, rtol=1e-5)
  plain = losses.dense_loss("sigmoid", z["image"], z["text"], scale, bias)
  assert abs(float(metrics["loss"]) - float(plain)) > 1e-2, (float(metrics["loss"]), float(plain))


def test_microbatched_step_with_ema_teacher_and_queue_equals_full_batch():
  """GradCache with loss state: a momentum-distillation term with a queue, whose EMA
  teacher embeds the batch micro-batch by micro-batch. One step with K = 4 gives the same
  loss, params, EMA copies and queue as the full batch."""
  import ml_collections
  from xmodal.losses import terms
  config = _config(**{"loss.impl": "gathered", "mesh.data": 2})
  config.loss.terms = ml_collections.ConfigDict({"mod": terms.section(
      "momentum", momentum=0.5, queue=2 * config.batch_size)})
  config_lib.validate(config, 2)
  mesh = parallel.make_mesh(config, jax.devices()[:2])
  model = model_lib.MultiTower(config)
  tx = optim.make_optimizer(config)
  objective = losses.make_objective(config, mesh)
  state = jax.device_put(train.init_state_fn(model, tx, config)(jax.random.key(0)),
                         parallel.replicated(mesh))
  batch = parallel.global_batch(mesh, _batch(config, seed=2))
  results = []
  for k in (1, 4):
    step = jax.jit(train.make_train_step(model, tx, objective, optim.schedule(config), k))
    new, metrics = step(state, batch)
    new, metrics = step(new, batch)                           # the queue now holds a step
    results.append((new, metrics))
  (full, m_full), (mb, m_mb) = results
  np.testing.assert_allclose(m_mb["loss"], m_full["loss"], rtol=1e-5)
  assert int(full["loss"]["queue"]["mod"]["ptr"]) == 2 * config.batch_size % (2 * config.batch_size)
  for path, a in jax.tree_util.tree_leaves_with_path(full["loss"]):
    b = _get(mb["loss"], path)
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-4, atol=1e-6,
                               err_msg=jax.tree_util.keystr(path))
  lr = float(optim.schedule(config)(1))       # Adam's noise on near-zero grads: see above
  for path, a in jax.tree_util.tree_leaves_with_path(full["params"]):
    np.testing.assert_allclose(np.asarray(_get(mb["params"], path)), np.asarray(a), rtol=1e-4,
                               atol=2e-2 * lr, err_msg=jax.tree_util.keystr(path))
