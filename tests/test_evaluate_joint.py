"""Joint retrieval (evaluate/joint.py): Symile's MIP and GRAM's volume rank a sample's own
row first where it is the one that completes the others, and the metrics name each target."""

import numpy as np

import loss_cases
from xmodal.evaluate import joint
from xmodal.losses import objectives


def _xor_like(n=64, d=32, seed=0):
  """c = a * b elementwise (signs): pairwise cosines say nothing about which c, the MIP does."""
  rng = np.random.default_rng(seed)
  a = np.sign(rng.normal(size=(n, d))) / np.sqrt(d)
  b = np.sign(rng.normal(size=(n, d))) / np.sqrt(d)
  c = a * b * np.sqrt(d)
  return a, b, c / np.linalg.norm(c, axis=1, keepdims=True)


def test_symile_mip_retrieves_what_cosines_cannot():
  a, b, c = _xor_like()
  r = joint.recall(joint.scores("symile", [a, b], c))
  assert r["R1"] == 1.0
  pairwise = joint.recall((a + b) @ c.T)          # summed cosines of the query sides
  assert pairwise["R1"] < 0.2


def test_gram_volume_ranks_the_coplanar_row_first():
  rng = np.random.default_rng(1)
  a = rng.normal(size=(32, 6))
  b = rng.normal(size=(32, 6))
  c = a + b                                     # sample i's c lies in span(a_i, b_i): volume 0
  unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)   # noqa: E731
  assert joint.recall(joint.scores("gram", [unit(a), unit(b)], unit(c)))["R1"] == 1.0


def test_metrics_for_every_target_of_a_group():
  config = loss_cases.vector_config("symile")
  rng = np.random.default_rng(2)
  z = {t: rng.normal(size=(20, 4)) for t in "xyz"}
  m = joint.metrics(config, z)
  assert {k.rsplit("/", 1)[0] for k in m} == {"symile/y-z_to_x", "symile/x-z_to_y",
                                              "symile/x-y_to_z"}
  assert joint.metrics(loss_cases.vector_config("softmax"), z) == {}
  assert "gram" in objectives.names()
