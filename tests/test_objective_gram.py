"""GRAM (objectives/gram.py): the closed-form determinant equals numpy's brute-force det of
the Gram matrix, k = 2 gives |sin theta| (so two-modality GRAM is not CLIP), the loss equals
the paper's formula in float64, and gradients are finite where the volume is 0."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import loss_cases
from xmodal.losses import groups, objectives

GRAM = objectives.get("gram")


@pytest.mark.parametrize("k", [2, 3, 4])
def test_closed_form_is_the_determinant(k):
  keys = jax.random.split(jax.random.key(k), 2)
  a = loss_cases.unit(keys[0], (5, 6))
  others = loss_cases.unit(keys[1], (7, k - 1, 6))
  got = np.asarray(GRAM.gram_det(a, others))
  a64, o64 = np.asarray(a, np.float64), np.asarray(others, np.float64)
  for i in range(5):
    for j in range(7):
      m = np.concatenate([a64[i:i + 1], o64[j]], 0)
      np.testing.assert_allclose(got[i, j], np.linalg.det(m @ m.T), atol=2e-6)


def test_two_modalities_volume_is_abs_sine():
  theta = np.linspace(0.1, 3.0, 9)
  a = jnp.asarray(np.stack([np.ones_like(theta), np.zeros_like(theta)], 1)[:1])
  o = jnp.asarray(np.stack([np.cos(theta), np.sin(theta)], 1)[:, None, :], jnp.float32)
  vol = np.asarray(GRAM.volume(a, o, 0.0))[0]
  np.testing.assert_allclose(vol, np.abs(np.sin(theta)), atol=1e-6)


def test_two_modalities_is_not_clip():
  k = jax.random.split(jax.random.key(1), 2)
  emb = {"x": loss_cases.unit(k[0], (12, 6)), "y": loss_cases.unit(k[1], (12, 6))}
  ctx = loss_cases.context(emb)
  clip = loss_cases.dense("softmax", loss_cases.options("softmax", label_smoothing=0.1), ctx,
                          5.0)
  gram = groups.dense(GRAM, loss_cases.options("gram"), ctx, ("x", "y"), 5.0)
  assert abs(float(gram) - float(clip)) > 0.05
  # antipodal columns have volume 0, like the positive: CLIP would rank them last
  y_flipped = {"x": emb["x"], "y": emb["x"].at[1].set(-emb["x"][0])}
  vol = np.asarray(GRAM.volume(y_flipped["x"], y_flipped["y"][:, None], 0.0))
  assert vol[0, 0] < 1e-3 and vol[0, 1] < 1e-3


def _brute(a, others, scale, eps_ls, eps):
  a, others = np.asarray(a, np.float64), [np.asarray(o, np.float64) for o in others]
  b = len(a)
  s = np.zeros((b, b))
  for i in range(b):
    for j in range(b):
      m = np.stack([a[i]] + [o[j] for o in others])
      s[i, j] = -scale * np.sqrt(max(np.linalg.det(m @ m.T), 0) + eps)
  q = (1 - eps_ls) * np.eye(b) + eps_ls / b
  rows = np.mean([loss_cases.ce(s[i], q[i]) for i in range(b)])
  cols = np.mean([loss_cases.ce(s[:, j], q[:, j]) for j in range(b)])
  return 0.5 * (rows + cols)


def test_matches_the_papers_formula():
  k = jax.random.split(jax.random.key(2), 3)
  emb = {t: loss_cases.unit(kk, (10, 5)) for t, kk in zip("xyz", k)}
  got = groups.dense(GRAM, loss_cases.options("gram", anchor="y"), loss_cases.context(emb),
                     ("x", "y", "z"), 7.0)
  want = _brute(emb["y"], [emb["x"], emb["z"]], 7.0, 0.1, 1e-8)
  np.testing.assert_allclose(got, want, rtol=2e-5)


def test_gradient_is_finite_at_zero_volume():
  x = loss_cases.unit(jax.random.key(4), (6, 5))
  emb = {"x": x, "y": x, "z": x}            # every positive spans volume 0
  f = lambda e: groups.dense(GRAM, loss_cases.options("gram"), loss_cases.context(e),  # noqa: E731
                             ("x", "y", "z"), 5.0)
  g = jax.grad(f)(emb)
  assert all(np.all(np.isfinite(np.asarray(v))) for v in g.values())
