"""Toy runs where a group objective must succeed and pairwise CLIP cannot (slow), and
three-tower runs through `xmodal train`.

Symile's binary XOR data (Saporta et al. 2024): a, b uniform random bit vectors, c = a XOR b.
Every pair of modalities is independent, the triple is not: summed pairwise CLIP has no
signal and predicts the held-out modality at chance; Symile learns it. Real train step,
optimizer and objective on small MLP towers (loss_cases.ToyTowers)."""

import itertools

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

import loss_cases
from tiny import make_tiny_config
from xmodal.evaluate import joint
from xmodal.losses import terms

BITS = 4                         # 16 possible values of the held-out modality: chance 1/16


def _xor(rng, n):
  a = rng.randint(0, 2, (n, BITS))
  b = rng.randint(0, 2, (n, BITS))
  return {"a": 2.0 * a - 1, "b": 2.0 * b - 1, "c": 2.0 * (a ^ b) - 1}


def _config(objective):
  c = make_tiny_config(**{"model.embed_dim": 16, "batch_size": 256, "data.source": "synthetic",
                          "loss.impl": "dense", "optim.lr": 3e-3, "optim.warmup_steps": 1,
                          "optim.end_lr_fraction": 1.0, "train.total_steps": 400})
  c.towers = loss_cases.vector_towers(**{m: dict(features=BITS) for m in "abc"})
  if objective == "symile":
    c.loss.terms = ml_collections.ConfigDict({"symile": terms.section("symile")})
  if objective == "gram":                         # c the anchor, a and b the others
    c.loss.terms = ml_collections.ConfigDict({"gram": terms.section("gram", pairs=("c:a:b",))})
    c.optim.lr, c.train.total_steps = 1e-2, 600
  return c                                        # softmax: every pair a:b, a:c, b:c summed


def _accuracy(objective, model, params):
  """Predict c from (a, b) among all 2^BITS candidates: Symile by the MIP, CLIP by the
  summed cosines of the two query sides."""
  data = _xor(np.random.RandomState(999), 1000)
  cands = np.array(list(itertools.product((-1.0, 1.0), repeat=BITS)))
  z = model.apply({"params": params}, {k: jnp.asarray(v) for k, v in data.items()})
  zc = np.asarray(model.apply({"params": params}, {"c": jnp.asarray(cands)})["c"])
  za, zb = np.asarray(z["a"]), np.asarray(z["b"])
  if objective == "gram":
    scores = joint.scores("gram", [za, zb], zc)
  else:
    scores = (za * zb if objective == "symile" else za + zb) @ zc.T
  pred = cands[np.argmax(scores, axis=1)]
  return float(np.mean(np.all(pred == data["c"], axis=1)))


@pytest.mark.slow
def test_symile_learns_xor_where_pairwise_clip_cannot():
  """Measured: symile 1.0, gram 0.18, summed pairwise CLIP 0.062 (chance 1/16). GRAM's
  volume holds the product of the three cosines (det G = 1 - sum cos^2 + 2 prod cos), a
  little of the triple's structure; pairwise cosines hold none."""
  accuracy = {}
  for objective in ("softmax", "symile", "gram"):
    config = _config(objective)
    model = loss_cases.ToyTowers(config, {m: 64 for m in "abc"}, 16)
    batches = lambda i: _xor(np.random.RandomState(i), 256)  # noqa: E731
    state, _ = loss_cases.train_run(config, batches, config.train.total_steps, model)
    accuracy[objective] = _accuracy(objective, model, state["params"])
  assert accuracy["symile"] > 0.9, accuracy                   # chance: 1/16
  assert accuracy["softmax"] < 0.1, accuracy
  assert accuracy["gram"] > 0.12, accuracy                    # above 2x chance


_THREE = """
import sys
sys.path.insert(0, {root!r})
from configs import three_towers


def get_config():
  c = three_towers.get_config({objective!r})
  c.data.image_size, c.towers.image.patch_size = 16, 8
  for t in c.towers.values():
    t.width, t.depth, t.num_heads = 32, 1, 2
  c.towers.audio.frames, c.towers.audio.n_mels = 16, 16
  c.model.embed_dim, c.batch_size, c.data.context_length = 32, 32, 16
  c.optim.warmup_steps, c.train.total_steps = 2, 40
  c.train.log_every, c.train.eval_every, c.train.checkpoint_every = 1, 20, 40
  c.data.synthetic_eval_size, c.eval.batch_size = 64, 64
  return c
"""


@pytest.mark.slow
@pytest.mark.parametrize("objective", ["binding", "symile"])
def test_three_towers_train_from_the_cli(objective, tmp_path):
  """image, audio and text through `xmodal train` with one group term: the loss falls,
  each group part and each pair's retrieval and geometry are in metrics.jsonl at every
  evaluation (and Symile's joint retrieval), and what the objective trains is above
  chance: binding's pairwise class retrieval (1/8 classes), Symile's joint retrieval of
  each tower from the other two (R@10 among 64, 8 examples per class)."""
  import os
  import subprocess
  import sys
  from xmodal import metrics as metrics_lib
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  path = tmp_path / "three.py"
  path.write_text(_THREE.format(root=root, objective=objective))
  work = str(tmp_path / "run")
  subprocess.run([sys.executable, "-m", "xmodal.cli", "train", f"--config={path}",
                  f"--workdir={work}"], check=True, stdout=subprocess.DEVNULL)
  rows = list(metrics_lib.read_jsonl(work))
  losses = [r for r in rows if "loss" in r]
  evals = [r for r in rows if any(k.startswith("retrieval/") for k in r)]
  assert all(metrics_lib.TAG.fullmatch(k) for r in rows for k in r), rows[-1]
  assert np.mean([r["loss"] for r in losses[-5:]]) < np.mean([r["loss"] for r in losses[:5]])
  assert len(evals) >= 2
  group = f"{objective}/image-audio-text"
  parts = ({f"loss/{group}/image-audio", f"loss/{group}/image-text"} if objective == "binding"
           else {f"loss/{group}/anchor_{t}" for t in ("image", "audio", "text")})
  assert parts <= set(losses[-1]), sorted(losses[-1])
  last = evals[-1]
  for a, b in (("image", "audio"), ("image", "text"), ("audio", "text")):
    for k in ("gap", "alignment"):
      assert f"geometry/{a}-{b}/{k}" in last
    assert f"geometry/{a}/effective_rank" in last and f"geometry/{b}/uniformity" in last
    if objective == "binding":            # pairs by cosine: what binding trains
      assert last[f"retrieval/{a}_to_{b}/class_top1"] > 0.3, (a, b, last)
  if objective == "symile":               # the MIP of the other two: what symile trains
    for target, query in (("image", "audio-text"), ("audio", "image-text"),
                          ("text", "image-audio")):
      assert last[f"joint/symile/{query}_to_{target}/R10"] > 0.5, last   # chance 10/64
