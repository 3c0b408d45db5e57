"""Fast paths of the transformer layers against their plain references: the CPU Dense matmul
(`dense_dot_general`, values and gradients, and a whole train step), and the choice of
cuDNN attention (with cuDNN against XLA where a GPU runs)."""

import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from xmodal import losses, optim, train
from xmodal.models import layers, model as model_lib
from tiny import make_tiny_config

DENSE = (((1,), (0,)), ((), ()))


def _dense_loss(dot_general, x, kernel):
  dims = (((x.ndim - 1,), (0,)), ((), ()))
  return jnp.sum(jnp.tanh(dot_general(x, kernel, dims)) ** 2)


@pytest.mark.parametrize("shape", [(6, 5, 16, 40), (6, 5, 40, 16), (7, 24, 24), (3, 8, 8, 4)])
def test_dense_dot_general_matches_lax_values_and_gradients(shape):
  """Both kernel-gradient forms (in <= out and in > out), 2-D and 3-D inputs."""
  *lead, k_in, k_out = shape
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(*lead, k_in)), jnp.float32)
  kernel = jnp.asarray(rng.normal(size=(k_in, k_out)) / np.sqrt(k_in), jnp.float32)
  fast = jax.jit(jax.value_and_grad(lambda *a: _dense_loss(layers.dense_dot_general, *a),
                                    argnums=(0, 1)))
  plain = jax.jit(jax.value_and_grad(lambda *a: _dense_loss(lax.dot_general, *a),
                                     argnums=(0, 1)))
  (value, (dx, dk)), (ref, (ref_dx, ref_dk)) = fast(x, kernel), plain(x, kernel)
  np.testing.assert_allclose(value, ref, rtol=1e-6)
  np.testing.assert_allclose(dx, ref_dx, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(dk, ref_dk, rtol=1e-5, atol=1e-5)
  # Float64 brute force on the host: the kernel gradient is sum over rows of x^T g.
  x64, k64 = np.asarray(x, np.float64), np.asarray(kernel, np.float64)
  y = x64 @ k64
  g = 2 * np.tanh(y) * (1 - np.tanh(y) ** 2)
  brute = x64.reshape(-1, k_in).T @ g.reshape(-1, k_out)
  np.testing.assert_allclose(dk, brute, rtol=1e-4, atol=1e-4)


def test_dense_dot_general_keeps_other_contractions_and_bfloat16():
  rng = np.random.default_rng(1)
  a = jnp.asarray(rng.normal(size=(3, 4, 5)), jnp.float32)
  b = jnp.asarray(rng.normal(size=(3, 5, 6)), jnp.float32)
  batched = (((2,), (1,)), ((0,), (0,)))          # not Dense's numbers: plain lax
  np.testing.assert_array_equal(layers.dense_dot_general(a, b, batched),
                                lax.dot_general(a, b, batched))
  x = jnp.asarray(rng.normal(size=(8, 32)), jnp.bfloat16)
  kernel = jnp.asarray(rng.normal(size=(32, 16)) / 6, jnp.bfloat16)
  grads = [jax.grad(lambda x, k: _dense_loss(f, x, k).astype(jnp.float32), argnums=(0, 1))(
      x, kernel) for f in (layers.dense_dot_general, lax.dot_general)]
  for fast, ref in zip(*grads):
    assert fast.dtype == ref.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(fast, np.float32), np.asarray(ref, np.float32),
                               rtol=2e-2, atol=2e-2)


def test_train_step_with_the_fast_dense_matches_plain_dense(monkeypatch):
  """Whole train step (tiny towers, AdamW, gathered loss over 8 devices): loss, gradient norm
  and updated params as with flax's own Dense matmul."""
  config = make_tiny_config()
  model = model_lib.MultiTower(config)
  tx = optim.make_optimizer(config)
  rng = np.random.default_rng(0)
  batch = {"image": rng.integers(0, 255, (32, 16, 16, 3), np.uint8),
           "text": rng.integers(2, 200, (32, config.data.context_length)).astype(np.int32)}
  state = train.init_state_fn(model, tx, config)(jax.random.key(0))

  def run():
    step = train.make_train_step(model, tx, losses.make_objective(config, None),
                                 optim.schedule(config))
    return jax.jit(step)(state, batch)

  config.loss.impl = "dense"
  new_fast, m_fast = run()
  monkeypatch.setattr(layers, "dense_dot_general", lax.dot_general)
  new_plain, m_plain = run()
  for k in ("loss", "grad_norm"):
    np.testing.assert_allclose(m_fast[k], m_plain[k], rtol=1e-5, err_msg=k)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
               new_fast["params"], new_plain["params"])


def _device(platform="gpu", version="cuda 12080", capability="9.0"):
  """A device description as attention_implementation reads it (no GPU here)."""
  return types.SimpleNamespace(platform=platform, compute_capability=capability,
                               client=types.SimpleNamespace(platform_version=version))


def test_attention_implementation_picks_cudnn_only_where_it_runs():
  bf16, h100 = jnp.bfloat16, _device()
  assert layers.attention_implementation(bf16, 64, h100) == "cudnn"
  assert layers.attention_implementation(jnp.float16, 128, h100) == "cudnn"
  assert layers.attention_implementation(jnp.float32, 64, h100) == "xla"   # cuDNN: half only
  assert layers.attention_implementation(bf16, 60, h100) == "xla"          # not a multiple of 8
  assert layers.attention_implementation(bf16, 256, h100) == "xla"
  assert layers.attention_implementation(bf16, 64, _device(capability="7.0")) == "xla"
  assert layers.attention_implementation(bf16, 64, _device(version="rocm 6.2")) == "xla"
  assert layers.attention_implementation(bf16, 64, _device("cpu", "cpu", None)) == "xla"
  assert layers.attention_implementation(bf16, 64) == (
      "cudnn" if jax.default_backend() == "gpu" else "xla")


@pytest.mark.skipif(layers.attention_implementation(jnp.bfloat16, 64) != "cudnn",
                    reason="needs a GPU with cuDNN flash attention")
@pytest.mark.parametrize("causal,padded", [(False, False), (True, False), (False, True)])
def test_cudnn_attention_matches_xla(causal, padded):
  rng = np.random.default_rng(0)
  q, k, v = (jnp.asarray(rng.normal(size=(4, 32, 4, 64)), jnp.bfloat16) for _ in range(3))
  mask = jnp.arange(32)[None] < jnp.array([32, 20, 7, 1])[:, None] if padded else None

  def loss(impl, q, k, v):
    if impl == "xla":
      out = jax.nn.dot_product_attention(q, k, v, is_causal=causal, implementation="xla",
                                         mask=None if mask is None else mask[:, None, None])
    else:
      out = layers.attention(q, k, v, mask, causal)
    return jnp.sum(out.astype(jnp.float32) ** 2), out

  (_, out), (_, ref) = loss("cudnn", q, k, v), loss("xla", q, k, v)
  np.testing.assert_allclose(np.asarray(out, np.float32), np.asarray(ref, np.float32),
                             rtol=2e-2, atol=2e-2)
  grads = [jax.grad(lambda *a, i=i: loss(i, *a)[0], argnums=(0, 1, 2))(q, k, v)
           for i in ("cudnn", "xla")]
  for a, b in zip(*grads):
    np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32),
                               rtol=5e-2, atol=5e-2)


def test_remat_dots_keeps_the_fast_dense_outputs(monkeypatch):
  """remat="dots" saves the Dense outputs of the CPU fast path (a custom_vjp, which the dots
  policy cannot see by itself): with it, every remat mode costs the FLOPs it costs with plain
  `lax.dot_general` Dense layers (XLA's cost analysis of the jitted gradient)."""
  x = jnp.asarray(np.random.default_rng(0).normal(size=(4, 16, 32)), jnp.float32)

  def flops(remat):
    encoder = layers.Encoder(depth=2, num_heads=2, remat=remat)
    params = encoder.init(jax.random.key(0), x)
    grad = jax.jit(jax.grad(lambda p: jnp.sum(encoder.apply(p, x) ** 2)))
    cost = grad.lower(params).compile().cost_analysis()
    return (cost[0] if isinstance(cost, (list, tuple)) else cost)["flops"]

  fast = {remat: flops(remat) for remat in ("none", "dots", "full")}
  monkeypatch.setattr(layers, "dense_dot_general", jax.lax.dot_general)
  plain = {remat: flops(remat) for remat in ("none", "dots", "full")}
  for remat in fast:
    assert fast[remat] == pytest.approx(plain[remat], rel=0.01), (remat, fast, plain)
  assert fast["none"] < fast["dots"] < 1.1 * fast["none"] < fast["full"], fast
