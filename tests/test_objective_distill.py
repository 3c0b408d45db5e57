"""Distillation (objectives/distill.py): an ensemble of stored teachers against a float64
loop, teacher == student gives no distillation gradient, teacher towers run in the step,
and the config names what is missing. Parity with open_clip's DistillClipLoss:
tests/test_openclip_parity.py."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

import loss_cases
from tiny import make_tiny_config
from xmodal import config as config_lib, losses
from xmodal.losses import terms


def _brute(x, y, tx, ty, scale, scales):
  """1/2 [mean_i CE(mean_k softmax(T^k_i.), softmax(S_i.)) + the same per column]."""
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  s = scale * x @ y.T
  unit = lambda a: a / np.linalg.norm(a, axis=-1, keepdims=True)  # noqa: E731
  tx, ty = unit(np.asarray(tx, np.float64)), unit(np.asarray(ty, np.float64))
  teachers = [sk * tx[:, k] @ ty[:, k].T for k, sk in enumerate(scales)]
  rows = [loss_cases.ce(s[i], np.mean([loss_cases.softmax(t[i]) for t in teachers], 0))
          for i in range(len(x))]
  cols = [loss_cases.ce(s[:, j], np.mean([loss_cases.softmax(t[:, j]) for t in teachers], 0))
          for j in range(len(y))]
  return 0.5 * (np.mean(rows) + np.mean(cols))


def test_stored_ensemble_matches_loop():
  """Three teachers stored with the data ([B, M, Dt], not unit), one scale each."""
  k = jax.random.split(jax.random.key(0), 4)
  x, y = loss_cases.unit(k[0], (10, 6)), loss_cases.unit(k[1], (10, 6))
  tx, ty = jax.random.normal(k[2], (10, 3, 5)), jax.random.normal(k[3], (10, 3, 5))
  opts = loss_cases.options("distill", teacher="ta:tb", source="batch",
                            teacher_scale=(10.0, 30.0, 50.0))
  ctx = loss_cases.context({"x": x, "y": y}, batch={"ta": tx, "tb": ty})
  np.testing.assert_allclose(loss_cases.dense("distill", opts, ctx, 8.0),
                             _brute(x, y, tx, ty, 8.0, (10.0, 30.0, 50.0)), rtol=1e-5)
  one = loss_cases.options("distill", teacher="ta:tb", source="batch", teacher_scale=(20.0,))
  np.testing.assert_allclose(loss_cases.dense("distill", one, ctx, 8.0),
                             _brute(x, y, tx, ty, 8.0, (20.0,) * 3), rtol=1e-5)


def test_teacher_equal_to_student_gives_no_gradient():
  """Targets softmax(teacher) = softmax(student): the cross-entropy's gradient is
  softmax(S) - target = 0 (its value is the student's entropy, not 0)."""
  k = jax.random.split(jax.random.key(1), 2)
  x, y = loss_cases.unit(k[0], (12, 6)), loss_cases.unit(k[1], (12, 6))
  opts = loss_cases.options("distill", teacher="tx:ty", teacher_scale=(7.0,))

  def loss(x, y, scale):
    ctx = loss_cases.context({"x": x, "y": y, "tx": x, "ty": y})
    return loss_cases.dense("distill", opts, ctx, scale)
  value, grads = jax.value_and_grad(loss, argnums=(0, 1, 2))(x, y, jnp.float32(7.0))
  assert float(value) > 1.0
  for g in grads:
    np.testing.assert_allclose(g, 0.0, atol=1e-6)
  assert float(jnp.abs(jax.grad(loss)(x, y, jnp.float32(9.0))).max()) > 1e-3


def _teacher_config():
  c = make_tiny_config(**{"data.source": "synthetic", "loss.impl": "gathered",
                          "model.embed_dim": 16, "batch_size": 16, "optim.warmup_steps": 0})
  c.towers = loss_cases.vector_towers(x=dict(features=8, width=16), y=dict(features=8, width=16),
                                      tx=dict(features=8, width=16, input="x"),
                                      ty=dict(features=8, width=16, input="y"))
  c.train.frozen = ("tx/.*", "ty/.*")
  c.loss.terms = ml_collections.ConfigDict({
      "clip": terms.section("softmax", pairs=("x:y",)),
      "distill": terms.section("distill", teacher="tx:ty", pairs=("x:y",), weight=0.5)})
  return c


def test_config_names_what_distillation_needs():
  c = _teacher_config()
  config_lib.validate(c, 1)
  c.loss.terms.distill.teacher = ""
  with pytest.raises(config_lib.ConfigError, match=r"config\.loss\.terms\.distill\.teacher: required"):
    config_lib.validate(c, 1)
  c.loss.terms.distill.teacher = "tx:ty"
  c.train.frozen = ("tx/.*",)
  with pytest.raises(config_lib.ConfigError, match=r"config\.train\.frozen: the teacher tower 'ty'"):
    config_lib.validate(c, 1)
  c = _teacher_config()
  c.loss.terms.distill.source = "batch"
  with pytest.raises(config_lib.ConfigError, match=r"config\.loss\.terms\.distill\.source: 'batch'"):
    config_lib.validate(c, 1)


def test_teacher_towers_run_in_the_step_without_gradient():
  """The train step embeds the frozen teacher towers (reading the students' inputs) without
  gradient; its loss is clip + 0.5 * distill of those embeddings; the teachers do not move."""
  from xmodal import optim, parallel, train
  from xmodal.models import model as model_lib
  c = _teacher_config()
  mesh = parallel.make_mesh(c, jax.devices()[:2])
  model = model_lib.MultiTower(c)
  tx = optim.make_optimizer(c)
  objective = losses.make_objective(c, mesh)
  assert objective.frozen_towers() == ("tx", "ty") and objective.student_towers() == ("x", "y")
  state = jax.device_put(train.init_state_fn(model, tx, c)(jax.random.key(0)),
                         parallel.replicated(mesh))
  rng = np.random.RandomState(0)
  batch = {"x": rng.normal(size=(16, 8)).astype(np.float32),
           "y": rng.normal(size=(16, 8)).astype(np.float32)}
  step = jax.jit(train.make_train_step(model, tx, objective, optim.schedule(c)))
  new, metrics = step(state, parallel.global_batch(mesh, batch))
  z = model.apply({"params": state["params"]}, {"x": batch["x"], "y": batch["y"],
                                                "tx": batch["x"], "ty": batch["y"]})
  scale = float(jnp.exp(state["params"]["logit_scale"]))
  ctx = loss_cases.context(z)
  clip = loss_cases.dense("softmax", loss_cases.options("softmax"), ctx, scale)
  distill = loss_cases.dense("distill", loss_cases.options("distill", teacher="tx:ty"), ctx, scale)
  np.testing.assert_allclose(metrics["loss/clip"], clip, rtol=1e-5)
  np.testing.assert_allclose(metrics["loss/distill"], distill, rtol=1e-5)
  np.testing.assert_allclose(metrics["loss"], clip + 0.5 * distill, rtol=1e-5)
  for t in ("tx", "ty"):
    for a, b in zip(jax.tree.leaves(new["params"][t]), jax.tree.leaves(state["params"][t])):
      np.testing.assert_array_equal(a, b)
  assert any(np.abs(np.asarray(a) - np.asarray(b)).max() > 0
             for a, b in zip(jax.tree.leaves(new["params"]["x"]),
                             jax.tree.leaves(state["params"]["x"])))


def test_stored_teachers_train_from_a_features_file(tmp_path):
  """MobileCLIP-style: two teachers' embeddings stored per example in the features file
  ([N, 2, 6]); the train loop carries those batch keys to the distill term; the config
  names a key the file lacks."""
  from xmodal import train
  from xmodal import metrics as metrics_lib
  rng = np.random.RandomState(0)
  n = 64
  latent = rng.normal(size=(n, 4))
  arrays = {"x": latent @ rng.normal(size=(4, 8)), "y": latent @ rng.normal(size=(4, 8)),
            "tx": np.stack([latent @ rng.normal(size=(4, 6)) for _ in range(2)], 1),
            "ty": np.stack([latent @ rng.normal(size=(4, 6)) for _ in range(2)], 1),
            "label": np.arange(n) % 4}
  np.savez(tmp_path / "f.npz", **{k: v.astype(np.float32 if k != "label" else np.int32)
                                  for k, v in arrays.items()})
  c = make_tiny_config(**{"data.source": "features", "data.train_files": str(tmp_path / "f.npz"),
                          "data.eval_files": str(tmp_path / "f.npz"), "model.embed_dim": 8,
                          "batch_size": 16, "train.total_steps": 6, "optim.warmup_steps": 1})
  c.towers = loss_cases.vector_towers(x=dict(features=8, width=16), y=dict(features=8, width=16))
  c.loss.terms = ml_collections.ConfigDict({
      "clip": terms.section("softmax"),
      "distill": terms.section("distill", source="batch", teacher="tx:ty",
                               teacher_scale=(10.0, 20.0))})
  final = train.train(c, str(tmp_path / "run"))
  rows = [r for r in metrics_lib.read_jsonl(str(tmp_path / "run")) if "loss" in r]
  assert len(rows) == 6 and all(np.isfinite(r["loss/distill"]) for r in rows)
  assert rows[-1]["loss/distill"] < rows[0]["loss/distill"]
  assert final["retrieval/examples"] == n
  c.loss.terms.distill.teacher = "tx:t_text"
  with pytest.raises(config_lib.ConfigError, match=r"loss\.terms\.distill\.teacher: \['t_text'\]"):
    config_lib.validate(c, 1)
