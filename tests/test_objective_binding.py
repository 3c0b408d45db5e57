"""Anchor binding (objectives/binding.py): per-pair weighted CLIP to one anchor, all pairs
without an anchor, and bad weights named."""

import jax
import numpy as np
import pytest

import loss_cases
from xmodal.fields import ConfigError
from xmodal.losses import groups, objectives

BIND = objectives.get("binding")


def _emb(seed):
  k = jax.random.split(jax.random.key(seed), 3)
  return {t: loss_cases.unit(kk, (10, 6)) for t, kk in zip("xyz", k)}


def _clip(ctx, a, b):
  return float(loss_cases.dense("softmax", loss_cases.options("softmax"), ctx, 5.0, a=a, b=b))


def test_weighted_pairs_to_the_anchor():
  ctx = loss_cases.context(_emb(0))
  opts = loss_cases.options("binding", anchor="y", weights=("x=3", "z=1"))
  got = groups.dense(BIND, opts, ctx, ("x", "y", "z"), 5.0)
  want = (3 * _clip(ctx, "y", "x") + _clip(ctx, "y", "z")) / 4
  np.testing.assert_allclose(got, want, rtol=1e-6)


def test_all_pairs_is_the_mean_of_pairwise_clip():
  ctx = loss_cases.context(_emb(1))
  got = groups.dense(BIND, loss_cases.options("binding"), ctx, ("x", "y", "z"), 5.0)
  want = np.mean([_clip(ctx, "x", "y"), _clip(ctx, "x", "z"), _clip(ctx, "y", "z")])
  np.testing.assert_allclose(got, want, rtol=1e-6)


def test_bad_weights_are_named():
  config = loss_cases.vector_config("binding", weights=("x=heavy",))
  with pytest.raises(ConfigError, match=r"loss\.terms\.binding\.weights: 'x=heavy'"):
    BIND.check(config.loss.terms.binding, config, "loss.terms.binding.")
