"""Sharded retrieval ranks equal the dense numpy ranks exactly, ties and misses included."""

import jax
import numpy as np
import pytest

from xmodal import parallel
from xmodal.evaluate import ranking
from tiny import make_tiny_config


def _mesh(devices):
  return parallel.make_mesh(make_tiny_config(), jax.devices()[:devices])


def _unit(x):
  return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("devices, num_gallery, block", [(1, 37, 16), (8, 101, 32), (8, 5, 64)])
def test_sharded_ranks_equal_dense_ranks(devices, num_gallery, block):
  rng = np.random.default_rng(devices + num_gallery)
  gallery = _unit(rng.normal(size=(num_gallery, 8)).astype(np.float32))
  gallery[1] = gallery[0]                      # an exact tie in the gallery
  queries = _unit(gallery[rng.integers(0, num_gallery, 45)] +
                  0.5 * rng.normal(size=(45, 8)).astype(np.float32))
  queries[3] = gallery[0]                      # its positive (1) ties with gallery[0]
  positives = np.full((45, 3), -1, np.int32)
  positives[:, 0] = rng.integers(0, num_gallery, 45)
  positives[3, 0] = 1
  positives[::4, 1] = rng.integers(0, num_gallery, 12)   # some queries have two positives
  queries[7] = np.nan                          # non-finite: a miss
  rank, nonfinite = ranking.ranks(queries, gallery, positives, _mesh(devices), block)
  expected = ranking.dense_ranks(queries, gallery, positives)
  np.testing.assert_array_equal(rank, expected)
  assert nonfinite == 1 and rank[7] == np.inf
  assert rank[3] >= 1                          # the tie counts against the query


def test_all_nan_embeddings_score_no_hits():
  """The failure the reliability issue found: an all-NaN model must not look perfect."""
  q = np.full((10, 4), np.nan, np.float32)
  rank, nonfinite = ranking.ranks(q, q, np.arange(10)[:, None], _mesh(8))
  metrics = ranking.recall_metrics(rank, ks=(1, 10, 20))
  assert nonfinite == 10 and metrics["R@1"] == metrics["R@10"] == metrics["R@20"] == 0.0
  assert metrics["mean_rank"] == np.inf                      # K past the gallery: still 0
  assert ranking.recall_metrics(rank, num_gallery=10)["mean_rank"] == 11.0   # past the end


def test_groups_make_multi_positive_rows_and_metrics_are_one_based():
  pos = ranking.positives_from_groups([0, 1, 2], [0, 0, 1, 2, 2, 2])
  np.testing.assert_array_equal(pos, [[0, 1, -1], [2, -1, -1], [3, 4, 5]])
  m = ranking.recall_metrics(np.array([0, 0, 4, 20]), ks=(1, 5))
  assert m == {"R@1": 0.5, "R@5": 0.75, "mean_rank": 7.0, "median_rank": 3.0}
