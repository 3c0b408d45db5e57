"""Evaluation never scores non-finite embeddings as matches: a diverged model's NaN
embeddings count as misses (R@K and zero-shot accuracy 0) and are reported as
eval/nonfinite."""

import jax
import numpy as np

from tiny import make_tiny_config
from xmodal import evaluate, optim, parallel, train
from xmodal.evaluate import retrieval, zeroshot
from xmodal.models import model as model_lib


def _brute_force_recall(q, g, k):
  """Row by row: a query is found if its match is finite and fewer than k finite gallery
  items score at least as high as it."""
  hits = 0
  for i in range(len(q)):
    s = [float(np.dot(q[i], g[j])) for j in range(len(g))]
    if not np.isfinite(s[i]):
      continue
    ahead = sum(1 for j in range(len(g)) if j != i and np.isfinite(s[j]) and s[j] >= s[i])
    hits += ahead < k
  return hits / len(q)


def test_recall_counts_nonfinite_rows_as_misses():
  rng = np.random.default_rng(0)
  q = rng.normal(size=(20, 8)).astype(np.float32)
  g = q + 0.5 * rng.normal(size=(20, 8)).astype(np.float32)
  q[3] = np.nan                  # a query that diverged
  g[7, 2] = np.inf               # a gallery item that diverged: its own query misses
  g[11] = np.nan                 # ... and it never outranks anyone else's match
  mesh = parallel.make_mesh(make_tiny_config())
  own = np.arange(20)[:, None]
  got, nonfinite = retrieval.directed(q, g, own, mesh, ks=(1, 3, 10))
  for k in (1, 3, 10):
    assert got[f"R{k}"] == _brute_force_recall(q, g, k), k
  assert got["R10"] <= 17 / 20 and nonfinite == 3       # queries 3, 7 and 11 miss
  nan = np.full((6, 4), np.nan, np.float32)
  got, nonfinite = retrieval.directed(nan, nan, np.arange(6)[:, None], mesh)
  assert (got["R1"], got["R5"], got["R10"], nonfinite) == (0.0, 0.0, 0.0, 6)


def test_zeroshot_counts_nonfinite_images_and_classes_as_misses():
  classes = np.eye(4, dtype=np.float32)
  images = classes[[0, 1, 2, 3, 0]].copy()
  labels = np.array([0, 1, 2, 3, 0])
  assert zeroshot.accuracy(images, classes, labels, ks=(1,)) == {"top1": 1.0}
  images[1] = np.nan
  bad_classes = classes.copy()
  bad_classes[2] = np.nan
  assert zeroshot.accuracy(images, bad_classes, labels, ks=(1, 4)) == {"top1": 0.6, "top4": 0.6}
  assert zeroshot.accuracy(np.full((5, 4), np.nan), classes, labels, ks=(1,)) == {"top1": 0.0}


def test_evaluation_of_a_diverged_model_scores_nothing_and_reports_it():
  config = make_tiny_config()
  mesh = parallel.make_mesh(config)
  model = model_lib.MultiTower(config)
  params = train.init_state_fn(model, optim.make_optimizer(config), config)(
      jax.random.key(0))["params"]
  params = jax.tree.map(lambda p: p * np.nan, params)
  results = evaluate.Evaluation(config, model, mesh).run(params, step=0)
  scored = {k: v for k, v in results.items()
            if k.startswith(("retrieval/", "zeroshot/top")) and "/R" in k or "/top" in k}
  assert scored and all(v == 0.0 for v in scored.values()), scored
  assert results["eval/nonfinite"] == 2 * config.data.shapes_eval_size
