"""Alignment regulariser (objectives/alignment.py): Wang & Isola's L_align in float64,
zero for identical towers, and a finite zero gradient there."""

import jax
import numpy as np

import loss_cases
from xmodal.losses import groups, objectives

ALIGN = objectives.get("alignment")


def test_matches_the_definition_over_every_pair():
  k = jax.random.split(jax.random.key(0), 3)
  emb = {t: loss_cases.unit(kk, (9, 4)) for t, kk in zip("xyz", k)}
  e = {t: np.asarray(v, np.float64) for t, v in emb.items()}
  for alpha in (2.0, 1.0):
    want = np.mean([np.mean(np.linalg.norm(e[a] - e[b], axis=1) ** alpha)
                    for a, b in (("x", "y"), ("x", "z"), ("y", "z"))])
    got = groups.dense(ALIGN, loss_cases.options("alignment", alpha=alpha),
                       loss_cases.context(emb), ("x", "y", "z"), 1.0)
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_identical_towers_align_perfectly():
  x = loss_cases.unit(jax.random.key(1), (6, 4))
  f = lambda e: groups.dense(ALIGN, loss_cases.options("alignment", alpha=1.0),  # noqa: E731
                             loss_cases.context(e), ("x", "y"), 1.0)
  assert float(f({"x": x, "y": x})) == 0.0
  g = jax.grad(f)({"x": x, "y": x})
  assert np.all(np.asarray(g["x"]) == 0)
