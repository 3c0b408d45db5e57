"""FILIP (objectives/filip.py): the paper's token-wise scores in float64 numpy with padding,
one token per side is CLIP, token order does not matter, padding is ignored, and `keep`
keeps the tokens FILIP's rule picks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import loss_cases
from xmodal.losses import objectives

FILIP = objectives.get("filip")


def _emb(seed, b=6, p=4, q=5, d=8):
  k = jax.random.split(jax.random.key(seed), 2)
  xm = (np.arange(p)[None] < 1 + np.arange(b)[:, None] % p).astype(np.float32)
  ym = (np.arange(q)[None] < 2 + np.arange(b)[:, None] % (q - 1)).astype(np.float32)
  return {"x:tokens": loss_cases.unit(k[0], (b, p, d)), "x:mask": jnp.asarray(xm),
          "y:tokens": loss_cases.unit(k[1], (b, q, d)), "y:mask": jnp.asarray(ym)}


def _loss(emb, scale=5.0, **opts):
  ctx = loss_cases.context({"x": emb["x:tokens"][:, 0], **emb}, rng=jax.random.key(9))
  return float(loss_cases.dense("filip", loss_cases.options("filip", **opts), ctx, scale))


def _brute(emb, scale):
  xt, xm = (np.asarray(emb[k], np.float64) for k in ("x:tokens", "x:mask"))
  yt, ym = (np.asarray(emb[k], np.float64) for k in ("y:tokens", "y:mask"))
  b = len(xt)
  s_row, s_col = np.zeros((b, b)), np.zeros((b, b))
  for i in range(b):
    for j in range(b):
      xi, yj = xt[i][xm[i] > 0], yt[j][ym[j] > 0]
      sim = xi @ yj.T
      s_row[i, j] = sim.max(1).mean()
      s_col[i, j] = sim.max(0).mean()
  rows = np.mean([loss_cases.ce(scale * s_row[i], np.eye(b)[i]) for i in range(b)])
  cols = np.mean([loss_cases.ce(scale * s_col[:, j], np.eye(b)[j]) for j in range(b)])
  return 0.5 * (rows + cols)


def test_matches_the_papers_formula():
  emb = _emb(0)
  np.testing.assert_allclose(_loss(emb), _brute(emb, 5.0), rtol=1e-5)


def test_one_token_per_side_is_clip():
  k = jax.random.split(jax.random.key(1), 2)
  x, y = loss_cases.unit(k[0], (8, 6)), loss_cases.unit(k[1], (8, 6))
  emb = {"x:tokens": x[:, None], "y:tokens": y[:, None]}
  clip = loss_cases.dense("softmax", loss_cases.options("softmax"),
                          loss_cases.context({"x": x, "y": y}), 5.0)
  np.testing.assert_allclose(_loss(emb), clip, rtol=1e-6)


def test_token_order_does_not_matter_and_padding_is_ignored():
  emb = _emb(2)
  base = _loss(emb)
  perm = {k: v[:, ::-1] for k, v in emb.items()}                 # reversed token order
  np.testing.assert_allclose(_loss(perm), base, rtol=1e-6)
  noisy = dict(emb)
  garbage = loss_cases.unit(jax.random.key(7), emb["y:tokens"].shape)
  noisy["y:tokens"] = jnp.where(emb["y:mask"][..., None] > 0, emb["y:tokens"], garbage)
  np.testing.assert_allclose(_loss(noisy), base, rtol=1e-6)
  assert abs(_loss({**emb, "y:mask": jnp.ones_like(emb["y:mask"])}) - base) > 1e-3


def test_keep_selects_filips_tokens():
  emb = _emb(3)
  np.testing.assert_allclose(_loss(emb, keep=5), _loss(emb), rtol=1e-6)   # keep >= T: all
  xt, xm = np.asarray(emb["x:tokens"]), np.asarray(emb["x:mask"])
  yt, ym = np.asarray(emb["y:tokens"]), np.asarray(emb["y:mask"])
  kept, kept_mask = FILIP.select(loss_cases.options("filip", keep=2), None, 2,
                                 *map(jnp.asarray, (xt, xm, yt, ym)))
  for i in range(6):                      # shard of row i: rows 0-2 or 3-5
    shard = slice(0, 3) if i < 3 else slice(3, 6)
    others = yt[shard][ym[shard] > 0]
    score = np.where(xm[i] > 0, (xt[i] @ others.T).max(1), -np.inf)
    want = np.sort(np.argsort(-score)[:2])
    got = [int(np.flatnonzero(np.all(np.isclose(xt[i], row), axis=1))[0])
           for row in np.asarray(kept[i])]
    assert sorted(got) == list(want), (i, got, want)
    assert np.asarray(kept_mask[i]).sum() == min(2, xm[i].sum())
  rand, rand_mask = FILIP.select(loss_cases.options("filip", keep=2, select="random"),
                                 jax.random.key(0), 1, *map(jnp.asarray, (xt, xm, yt, ym)))
  assert np.all(np.asarray(rand_mask).sum(1) == np.minimum(2, xm.sum(1)))


@pytest.mark.slow
def test_filip_trains_image_and_text_towers():
  """The real train step with tiny ViT and text towers returning token features, FILIP
  keeping 4 tokens per example: the loss falls."""
  import ml_collections
  from tiny import make_tiny_config
  from xmodal.data import synthetic
  from xmodal.losses import terms
  from xmodal.models import model as model_lib
  config = make_tiny_config(**{"towers.image.tokens": True, "towers.text.tokens": True,
                               "data.source": "synthetic", "loss.impl": "ring",
                               "loss.tile_size": 8, "optim.lr": 2e-3})
  config.loss.terms = ml_collections.ConfigDict({"filip": terms.section("filip", keep=4)})
  batches = lambda i: synthetic.paired_batch(config, 32, np.random.default_rng(i))[0]  # noqa: E731
  _, history = loss_cases.train_run(config, batches, 30, model_lib.MultiTower(config))
  assert np.mean(history[-5:]) < np.mean(history[:5]) - 0.3, history


def test_local_max_in_chunks_equals_all_at_once(monkeypatch):
  emb = _emb(4, b=10)
  args = [jnp.asarray(emb[k]) for k in ("x:tokens", "x:mask", "y:tokens", "y:mask")]
  whole = FILIP._local_max(*args)
  monkeypatch.setattr(FILIP, "CHUNK", 3)                # 4 chunks, the last one padded
  np.testing.assert_allclose(FILIP._local_max(*args), whole, rtol=1e-6)
  sim = np.einsum("ipd,jqd->ipjq", np.asarray(args[0]), np.asarray(args[2]))
  want = np.where(np.asarray(args[3])[None, None] > 0, sim, -np.inf).max(axis=(2, 3))
  np.testing.assert_allclose(whole, want, rtol=1e-6)
