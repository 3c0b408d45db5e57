"""Momentum distillation (objectives/momentum.py): its targets against a float64 loop,
alpha = 0 is CLIP, alpha ramps, and a small run where it beats CLIP on clean retrieval when
30% of the training pairs are shuffled. The EMA state itself: tests/test_loss_state.py."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

import loss_cases
from tiny import make_tiny_config
from xmodal.losses import objectives, terms


def _brute(x, y, xm, ym, scale, alpha):
  x, y, xm, ym = (np.asarray(a, np.float64) for a in (x, y, xm, ym))
  s, t = scale * x @ y.T, scale * xm @ ym.T
  eye = np.eye(len(x))
  rows = [loss_cases.ce(s[i], alpha * loss_cases.softmax(t[i]) + (1 - alpha) * eye[i])
          for i in range(len(x))]
  cols = [loss_cases.ce(s[:, j], alpha * loss_cases.softmax(t[:, j]) + (1 - alpha) * eye[j])
          for j in range(len(y))]
  return 0.5 * (np.mean(rows) + np.mean(cols))


def _ctx(seed=0, b=10, step=0):
  k = jax.random.split(jax.random.key(seed), 4)
  emb = {"x": loss_cases.unit(k[0], (b, 6)), "y": loss_cases.unit(k[1], (b, 6))}
  ema = {"x": loss_cases.unit(k[2], (b, 6)), "y": loss_cases.unit(k[3], (b, 6))}
  return emb, ema, loss_cases.context(emb, ema=ema, step=step)


def test_matches_albef_targets():
  emb, ema, ctx = _ctx()
  got = loss_cases.dense("momentum", loss_cases.options("momentum", alpha=0.4), ctx, 9.0)
  np.testing.assert_allclose(got, _brute(emb["x"], emb["y"], ema["x"], ema["y"], 9.0, 0.4),
                             rtol=1e-5)


def test_alpha_zero_is_clip_and_alpha_ramps():
  emb, ema, ctx = _ctx(1)
  clip = loss_cases.dense("softmax", loss_cases.options("softmax"), ctx, 6.0)
  np.testing.assert_allclose(
      loss_cases.dense("momentum", loss_cases.options("momentum", alpha=0.0), ctx, 6.0), clip,
      rtol=1e-6)
  ramp = loss_cases.options("momentum", alpha=0.4, ramp_steps=10)
  for step, alpha in ((0, 0.04), (4, 0.2), (9, 0.4), (50, 0.4)):
    _, _, ctx = _ctx(1, step=step)
    np.testing.assert_allclose(loss_cases.dense("momentum", ramp, ctx, 6.0),
                               _brute(emb["x"], emb["y"], ema["x"], ema["y"], 6.0, alpha),
                               rtol=1e-5)


def test_queue_keeps_the_ema_embeddings():
  emb, ema, ctx = _ctx(2)
  opts = loss_cases.options("momentum")
  rows, cols, _ = objectives.get("momentum").blocks(opts, ctx, "x", "y")
  kept = objectives.get("momentum").enqueue(opts, cols)
  np.testing.assert_array_equal(kept["feat"], ema["y"])


# ----------------------------------------------------------------------------- learning

L, F, B = 8, 16, 128
_A = np.random.RandomState(1).normal(size=(L, F))
_B = np.random.RandomState(2).normal(size=(L, F))


def _pairs(rng, n, shuffled=0.0):
  """Pairs x, y of one latent each (instance-level: every pair its own latent); a fraction
  `shuffled` of the rows get another row's y (noisy correspondence)."""
  z = rng.normal(size=(n, L))
  x = z @ _A + 0.5 * rng.normal(size=(n, F))
  y = z @ _B + 0.5 * rng.normal(size=(n, F))
  rows = np.flatnonzero(rng.rand(n) < shuffled)
  y[rows] = y[rng.permutation(rows)]
  return x.astype(np.float32), y.astype(np.float32)


def _config(objective):
  c = make_tiny_config(**{"model.embed_dim": 16, "batch_size": B, "data.source": "synthetic",
                          "loss.impl": "dense", "optim.lr": 1e-2, "optim.warmup_steps": 1,
                          "optim.end_lr_fraction": 1.0, "optim.weight_decay": 0.0,
                          "train.total_steps": 300})
  c.towers = loss_cases.vector_towers(x=dict(features=F), y=dict(features=F))
  if objective == "momentum":   # a shorter EMA than ALBEF's 0.995 for a 300-step run
    c.loss.terms = ml_collections.ConfigDict({"mod": terms.section(
        "momentum", alpha=0.4, momentum=0.98)})
  return c


def test_momentum_distillation_beats_clip_with_shuffled_pairs():
  """30% of every training batch's pairs are shuffled; held-out pairs are clean. The EMA
  teacher's soft targets put mass on the true partners of shuffled rows (they are in the
  batch), so the towers fit the noise less than CLIP's one-hot targets make them."""
  recall = {}
  for objective in ("softmax", "momentum"):
    config = _config(objective)
    model = loss_cases.ToyTowers(config, {"x": 64, "y": 64}, 16)
    batches = lambda i: dict(zip(("x", "y"), _pairs(np.random.RandomState(i), B, 0.3)))  # noqa: E731
    state, _ = loss_cases.train_run(config, batches, 300, model)
    if objective == "momentum":
      assert set(state["loss"]["ema"]["mod"]) == {"x", "y"}
    x, y = _pairs(np.random.RandomState(999), 1000)
    z = model.apply({"params": state["params"]}, {"x": jnp.asarray(x), "y": jnp.asarray(y)})
    s = np.asarray(z["x"]) @ np.asarray(z["y"]).T
    recall[objective] = 0.5 * (np.mean(s.argmax(1) == np.arange(1000))
                               + np.mean(s.argmax(0) == np.arange(1000)))
  assert recall["softmax"] > 0.5                               # CLIP learns too
  assert recall["momentum"] > recall["softmax"] + 0.01, recall
