"""FILIP (objectives/filip.py): the paper's token-wise scores in float64 numpy with padding,
one token per side is CLIP, token order does not matter, padding is ignored, and `keep`
keeps the tokens FILIP's rule picks; and on an attribute-binding toy (two coloured shapes)
FILIP retrieves better than CLIP (slow)."""

import itertools

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


# The attribute-binding toy: two coloured shapes in two of the four 8-pixel quadrants of a
# 16-pixel image, one ViT patch each; the caption names both ("a red circle and a blue
# square", in either order, whatever the quadrants). Every scene has a twin with the colours
# swapped, which only the binding of colour to shape tells apart.
_SHAPES = ("circle", "square", "triangle", "cross")
_COLOURS = ("red", "green", "blue", "yellow")
_SCENES = [((c1, s1), (c2, s2)) for s1, s2 in itertools.combinations(_SHAPES, 2)
           for c1, c2 in itertools.permutations(_COLOURS, 2)]       # 72, swaps included
_SWAP = [_SCENES.index(((b[0], a[1]), (a[0], b[1]))) for a, b in _SCENES]


def _scene_batch(tok, scenes, rng):
  """{"image": uint8 [n, 16, 16, 3], "text": int32 [n, L]} of _SCENES[i] for i in scenes."""
  from xmodal.data import shapes   # noqa: PLC0415
  yy, xx = np.mgrid[0:16, 0:16].astype(np.float32) + 0.5
  images, captions = [], []
  for i in scenes:
    img = rng.uniform(0, 40) + rng.normal(0, 8, (16, 16, 3))
    for (colour, shape), q in zip(_SCENES[i], rng.permutation(4)[:2]):
      cy = 8 * (q // 2) + 4 + rng.uniform(-0.5, 0.5)
      cx = 8 * (q % 2) + 4 + rng.uniform(-0.5, 0.5)
      mask = shapes._mask(shape, xx - cx, yy - cy, rng.uniform(2.8, 3.4))
      img[mask] = np.clip(np.array(shapes.COLOURS[colour]) + rng.normal(0, 12, 3), 0, 255)
    named = list(_SCENES[i])[::rng.choice([-1, 1])]
    images.append(np.clip(img, 0, 255).astype(np.uint8))
    captions.append(" and ".join(f"a {c} {s}" for c, s in named))
  return {"image": np.stack(images), "text": tok.encode_batch(captions)}


def _binding_run(objective, steps=150, batch=64):
  """Trains tiny ViT and text towers with `objective` on batches of 32 scenes and their 32
  swapped twins; -> (R@1 image->text and text->image among the 72 held-out scenes, the
  fraction of scenes scored above their swapped twin, both directions)."""
  from tiny import make_tiny_config   # noqa: PLC0415
  from xmodal.data import tokenizer as tokenizer_lib   # noqa: PLC0415
  from xmodal.losses import terms   # noqa: PLC0415
  from xmodal.models import model as model_lib   # noqa: PLC0415
  import ml_collections   # noqa: PLC0415
  config = make_tiny_config(**{"data.context_length": 32, "batch_size": batch,
                               "loss.impl": "dense", "optim.lr": 2e-3,
                               "optim.warmup_steps": 10, "train.total_steps": steps})
  if objective == "filip":
    config.towers.image.tokens = config.towers.text.tokens = True
    config.loss.terms = ml_collections.ConfigDict({"filip": terms.section("filip")})
  tok = tokenizer_lib.get_tokenizer(config)

  def batches(i):
    scenes = np.random.RandomState(i).randint(0, len(_SCENES), batch // 2)
    return _scene_batch(tok, np.concatenate([scenes, np.array(_SWAP)[scenes]]),
                        np.random.RandomState(10_000 + i))

  model = model_lib.MultiTower(config)
  state, _ = loss_cases.train_run(config, batches, steps, model)
  held_out = _scene_batch(tok, range(len(_SCENES)), np.random.RandomState(999))
  out = model.apply({"params": state["params"]}, jax.tree.map(jnp.asarray, held_out))
  if objective == "filip":                 # the paper's scores: s_row image->text, s_col back
    s_row, s_col = FILIP.token_scores(out["image:tokens"], out["image:mask"],
                                      out["text:tokens"], out["text:mask"])
    i2t, t2i = np.asarray(s_row), np.asarray(s_col).T
  else:
    i2t = np.asarray(out["image"]) @ np.asarray(out["text"]).T
    t2i = i2t.T
  n = np.arange(len(_SCENES))
  recall = np.mean([np.argmax(s, 1) == n for s in (i2t, t2i)])
  binding = np.mean([s[n, n] > s[n, _SWAP] for s in (i2t, t2i)])
  return float(recall), float(binding)


@pytest.mark.slow
def test_filip_binds_attributes_better_than_clip():
  """Attribute binding (two coloured shapes, captions naming both, swapped-colour twins in
  every batch and in the gallery): the same tiny towers, data, seed and 150 steps with CLIP
  and with FILIP. Measured: R@1 (mean of both directions, 72 scenes, chance 1/72) CLIP 0.58,
  FILIP 0.92; scored above the swapped twin CLIP 0.93, FILIP 1.0 (seed 1: R@1 0.43 / 0.69,
  twin 0.93 / 0.97). ~35 s on 2 shared cores. FILIP's max over image patches reads each
  shape from its own patch, so the text token for "red circle" must find a red circle;
  CLIP's one pooled vector must learn the pairing."""
  clip_recall, clip_binding = _binding_run("softmax")
  filip_recall, filip_binding = _binding_run("filip")
  assert filip_recall > 20 / 72, (filip_recall, clip_recall)           # 20x chance
  assert filip_recall > clip_recall + 0.2, (filip_recall, clip_recall)
  assert filip_binding > 0.95 and filip_binding >= clip_binding, (filip_binding, clip_binding)
