"""CWCL (objectives/cwcl.py): the paper's formula as a float64 loop, the identity-weights
limit (CLIP), and a small run where CWCL beats CLIP at zero-shot class accuracy when a batch
holds many same-class "false negatives"."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

import loss_cases
from tiny import make_tiny_config
from xmodal import config as config_lib
from xmodal.losses import terms


def _brute(x, y, u, scale, soft_rows):
  """Rows of x (the reference's modality when soft_rows) against y, w_ij = (1 + cos(u_i,
  u_j)) / 2 row-normalised in one direction, one-hot in the other; halves."""
  x, y, u = (np.asarray(a, np.float64) for a in (x, y, u))
  s = scale * x @ y.T
  b = len(x)
  w = np.array([[(1 + u[i] @ u[j] / np.linalg.norm(u[i]) / np.linalg.norm(u[j])) / 2
                 for j in range(b)] for i in range(b)])
  eye = np.eye(b)
  row_t, col_t = (w, eye) if soft_rows else (eye, w)
  rows = [loss_cases.ce(s[i], row_t[i] / row_t[i].sum()) for i in range(b)]
  cols = [loss_cases.ce(s[:, j], col_t[:, j] / col_t[:, j].sum()) for j in range(b)]
  return 0.5 * (np.mean(rows) + np.mean(cols))


@pytest.mark.parametrize("reference, soft_rows", [("x", True), ("y", False)])
def test_matches_paper_formula(reference, soft_rows):
  """The reference is the pair's frozen tower; its rows take the soft targets."""
  k = jax.random.split(jax.random.key(0), 2)
  x, y = loss_cases.unit(k[0], (9, 5)), loss_cases.unit(k[1], (9, 5))
  opts = loss_cases.options("cwcl", reference=reference)
  got = loss_cases.dense("cwcl", opts, loss_cases.context({"x": x, "y": y}), 6.0)
  u = x if reference == "x" else y
  np.testing.assert_allclose(got, _brute(x, y, u, 6.0, soft_rows), rtol=1e-5)


def test_identity_weights_are_clip():
  k = jax.random.split(jax.random.key(1), 3)
  emb = {"x": loss_cases.unit(k[0], (8, 4)), "y": loss_cases.unit(k[1], (8, 4)),
         "ref": loss_cases.unit(k[2], (8, 4))}
  identity = lambda u, v: (jnp.abs(u[:, None] - v[None]).sum(-1) == 0).astype(jnp.float32)  # noqa: E731
  ctx = loss_cases.context(emb)
  got = loss_cases.dense("cwcl", loss_cases.options("cwcl", reference="ref", soft="both"), ctx,
                         5.0, weight_fn=identity)
  clip = loss_cases.dense("softmax", loss_cases.options("softmax"), ctx, 5.0)
  np.testing.assert_allclose(got, clip, rtol=1e-6)
  soft = loss_cases.dense("cwcl", loss_cases.options("cwcl", reference="ref", soft="both"),
                          ctx, 5.0)
  assert abs(float(soft) - float(clip)) > 0.1                 # the weights do something


def test_config_names_the_missing_reference():
  c = make_tiny_config()
  c.loss.terms = ml_collections.ConfigDict({"cw": terms.section("cwcl")})
  with pytest.raises(config_lib.ConfigError, match=r"config\.loss\.terms\.cw\.reference: required"):
    config_lib.validate(c, 1)
  c.loss.terms.cw.reference = "audio"
  with pytest.raises(config_lib.ConfigError, match=r"config\.loss\.terms\.cw\.reference: 'audio'"):
    config_lib.validate(c, 1)
  c.loss.terms.cw.reference = "image"
  config_lib.validate(c, 1)


# ----------------------------------------------------------------------------- learning

C, DU, F = 8, 16, 32


def _data(rng, n):
  """A frozen, class-clustered 'image' embedding u (the reference) and 'text' inputs that
  carry the class weakly and the image's instance noise strongly (an instance shortcut);
  and the class prompts (the class part of a text alone)."""
  labels = rng.randint(0, C, n)
  protos = np.random.RandomState(123).normal(size=(C, DU))
  noise = rng.normal(size=(n, DU))
  u = protos[labels] + 0.3 * noise
  u /= np.linalg.norm(u, axis=1, keepdims=True)
  mix = np.random.RandomState(7).normal(size=(DU, F)) / np.sqrt(DU)
  classes = 0.3 * np.random.RandomState(8).normal(size=(C, F))
  text = classes[labels] + 3.0 * noise @ mix + rng.normal(size=(n, F))
  return labels, u.astype(np.float32), text.astype(np.float32), classes.astype(np.float32)


def _config(objective):
  c = make_tiny_config(**{"model.embed_dim": DU, "batch_size": 128, "data.source": "synthetic",
                          "loss.impl": "dense", "optim.lr": 1e-2, "optim.warmup_steps": 1,
                          "optim.end_lr_fraction": 1.0, "train.total_steps": 200})
  c.towers = loss_cases.vector_towers(image=dict(features=DU), text=dict(features=F))
  if objective == "cwcl":
    c.loss.terms = ml_collections.ConfigDict({"cwcl": terms.section("cwcl", reference="image")})
  return c


def test_cwcl_beats_clip_at_zero_shot_with_same_class_negatives():
  """Batches of 128 over 8 classes (~16 same-class rows each): CLIP must tell same-class
  pairs apart and leans on the instance shortcut; CWCL's targets spread over the class, so
  its text tower maps the class part (the prompts) closer to the class clusters. Real
  train step, optimizer and objective; small MLP text tower (loss_cases.ToyTowers)."""
  accuracy = {}
  for objective in ("softmax", "cwcl"):
    config = _config(objective)
    model = loss_cases.ToyTowers(config, {"image": 0, "text": 64}, DU)
    batches = lambda i: dict(zip(("image", "text"), _data(np.random.RandomState(i), 128)[1:3]))  # noqa: E731
    state, history = loss_cases.train_run(config, batches, 200, model)
    labels, u, _, prompts = _data(np.random.RandomState(999), 2000)
    z = model.apply({"params": state["params"]}, {"text": jnp.asarray(prompts)})["text"]
    accuracy[objective] = float(np.mean(np.argmax(u @ np.asarray(z).T, axis=1) == labels))
    assert history[-1] < history[0]
  assert accuracy["softmax"] > 0.5                             # both learn (chance: 1/8)
  assert accuracy["cwcl"] > accuracy["softmax"] + 0.03, accuracy
