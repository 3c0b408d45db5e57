"""Transformer building blocks shared by every tower.

Every parameter carries logical axis names (`embed`, `mlp`, `heads`, `vocab`, `norm`, ...);
`config.sharding.rules` maps them to mesh axes (see xmodal/sharding.py). Activations are
constrained to `("batch", "length", "act_embed")` between blocks so the compiler keeps
the batch split over data x fsdp and gathers parameters (FSDP) rather than activations.

Attention projects with 2-D `Dense` layers and reshapes (rather than `DenseGeneral`) so that
logical sharding annotations stay two-dimensional, and calls `jax.nn.dot_product_attention`
with cuDNN's fused flash attention where `attention_implementation` finds it (an NVIDIA GPU,
bfloat16 / float16) and XLA's attention elsewhere (jax's own default is always XLA). On CPU,
Dense layers take `dense_dot_general`, whose backward pass XLA:CPU runs faster.

Blocks are pre-LN (CLIP, SigLIP, ViT) or post-LN (BERT) by `norm_first`; the MLP activation
is one of ACTIVATIONS. `Encoder` can rematerialise each block (`remat`) and scan over the
blocks (`scan`: the parameters of all blocks are stacked on a leading "layers" axis under
`blocks/`; `stack_blocks` / `unstack_blocks` convert between the two layouts).
"""

import functools
import re
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.ad_checkpoint import checkpoint_name

Dtype = Any


def quick_gelu(x):
  """CLIP's (OpenAI's) GELU approximation x * sigmoid(1.702 x)."""
  return x * jax.nn.sigmoid(1.702 * x)


ACTIVATIONS = {
    "gelu_tanh": lambda x: nn.gelu(x, approximate=True),   # SigLIP, big_vision; the default
    "gelu": lambda x: nn.gelu(x, approximate=False),       # exact erf GELU (BERT, ViT-pytorch)
    "quick_gelu": quick_gelu,                              # OpenAI CLIP
    "relu": nn.relu,
}

DENSE_OUTPUT = "dense_output"   # checkpoint name of the CPU fast path's Dense outputs

REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    # a custom_vjp hides its dot_general from the dots policy: its outputs are saved by name
    "dots": jax.checkpoint_policies.save_from_both_policies(
        jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
        jax.checkpoint_policies.save_only_these_names(DENSE_OUTPUT)),
}


_CONTRACT_ROWS = (((0,), (0,)), ((), ()))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _dense_matmul(x, kernel, precision):
  return lax.dot_general(x, kernel, (((x.ndim - 1,), (0,)), ((), ())), precision=precision)


def _dense_matmul_fwd(x, kernel, precision):
  return _dense_matmul(x, kernel, precision), (x, kernel)


def _dense_matmul_bwd(precision, residuals, g):
  x, kernel = residuals
  dx = lax.dot_general(g, kernel, (((g.ndim - 1,), (1,)), ((), ())), precision=precision)
  x2, g2 = x.reshape(-1, x.shape[-1]), g.reshape(-1, g.shape[-1])
  if x2.shape[1] <= g2.shape[1]:
    dk = lax.dot_general(x2, g2, _CONTRACT_ROWS, precision=precision)
  else:   # the wide side as the output's rows; the barrier keeps XLA from swapping back
    dk = lax.optimization_barrier(lax.dot_general(g2, x2, _CONTRACT_ROWS, precision=precision)).T
  return dx, dk


_dense_matmul.defvjp(_dense_matmul_fwd, _dense_matmul_bwd)


def dense_dot_general(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None):
  """`lax.dot_general` for nn.Dense (x [..., K] . kernel [K, N]) whose backward pass states
  the kernel gradient as one 2-D product over the flattened rows, x2^T g2 [K, N].

  Why: from autodiff's own transpose rule XLA:CPU makes a transposed copy of g and runs the
  kernel gradient as a doubly transposed Eigen matmul (~57 GFLOP/s per core against ~95 for
  the same product in YNNPACK or as x2^T g2; tools/bench_step.py, docs/benchmarks/step.md).
  Same math, so only rounding moves; used on CPU only (other backends' matmul libraries take
  any transpose at full speed), and for exactly Dense's dimension numbers."""
  (lhs_c, rhs_c), (lhs_b, rhs_b) = dimension_numbers
  if (jax.default_backend() != "cpu" or preferred_element_type is not None or lhs_b or rhs_b
      or rhs.ndim != 2 or tuple(lhs_c) != (lhs.ndim - 1,) or tuple(rhs_c) != (0,)):
    return lax.dot_general(lhs, rhs, dimension_numbers, precision=precision,
                           preferred_element_type=preferred_element_type)
  return checkpoint_name(_dense_matmul(lhs, rhs, precision), DENSE_OUTPUT)


def dense(features: int, axes: tuple[str, str], dtype, name: str, use_bias: bool = True):
  """nn.Dense whose kernel [in, out] has logical axes `axes` and bias [out] `axes[1]`."""
  return nn.Dense(features, use_bias=use_bias, dtype=dtype, name=name,
                  kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(), axes),
                  bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (axes[1],)),
                  dot_general=dense_dot_general)


def layer_norm(dtype, name: str, eps: float = 1e-6):
  return nn.LayerNorm(epsilon=eps, dtype=dtype, name=name,
                      scale_init=nn.with_logical_partitioning(nn.initializers.ones, ("norm",)),
                      bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("norm",)))


def constrain(x):
  """Keeps [B, L, D] activations split over the batch axes (a no-op without a mesh)."""
  return nn.with_logical_constraint(x, ("batch", "length", "act_embed"))


class Embed(nn.Module):
  """Token ids int32 [...] -> vectors [..., features] from a table `embedding` [num, features]
  (logical axes vocab, embed). The table is gathered whole before the lookup, as FSDP does
  for every weight before use, so the vectors take the ids' batch sharding: looking up in a
  table still split over fsdp/model makes XLA reshard the result from the embed axis to
  the batch axes, which it can only do by replicating it on every device."""
  num_embeddings: int
  features: int

  @nn.compact
  def __call__(self, ids):
    table = self.param("embedding", nn.with_logical_partitioning(
        nn.initializers.normal(0.02), ("vocab", "embed")),
        (self.num_embeddings, self.features))
    table = nn.with_logical_constraint(table, (None, None))
    return jnp.take(table, ids, axis=0)


class Mlp(nn.Module):
  """x [B, L, D] -> [B, L, D] through a hidden layer of `hidden` units and `act`."""
  hidden: int
  dtype: Dtype = jnp.float32
  act: str = "gelu_tanh"

  @nn.compact
  def __call__(self, x):
    width = x.shape[-1]
    x = dense(self.hidden, ("embed", "mlp"), self.dtype, "fc1")(x)
    x = ACTIVATIONS[self.act](x)
    return dense(width, ("mlp", "embed"), self.dtype, "fc2")(x)


@functools.cache
def _cudnn_device(platform: str, platform_version: str, capability: str | None) -> bool:
  """cuDNN flash attention needs the CUDA backend on compute capability 8.0 (Ampere) or
  later."""
  if platform != "gpu" or "cuda" not in platform_version.lower() or not capability:
    return False
  return tuple(int(x) for x in capability.split(".")) >= (8, 0)


def attention_implementation(dtype, head_dim: int, device=None) -> str:
  """`implementation` for jax.nn.dot_product_attention: "cudnn" where cuDNN's fused flash
  attention takes these inputs (CUDA GPU of compute capability >= 8.0, bfloat16 or float16,
  head_dim a multiple of 8 up to 128), else "xla". device: the first device by default."""
  if jnp.dtype(dtype) not in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16)):
    return "xla"
  if head_dim % 8 or head_dim > 128:
    return "xla"
  device = jax.devices()[0] if device is None else device
  if _cudnn_device(device.platform, device.client.platform_version,
                   getattr(device, "compute_capability", None)):
    return "cudnn"
  return "xla"


def attention(q, k, v, mask=None, causal: bool = False):
  """q [B, T, H, Dh], k, v [B, S, H, Dh] -> [B, T, H, Dh]. mask [B, S] bool: True = a real
  key; real keys come first in each row (padding trails, as the text tower builds it), so
  cuDNN takes the mask as per-row key lengths."""
  if attention_implementation(q.dtype, q.shape[-1]) == "cudnn":
    lengths = None if mask is None else jnp.sum(mask, axis=-1, dtype=jnp.int32)
    try:
      return jax.nn.dot_product_attention(q, k, v, key_value_seq_lengths=lengths,
                                          is_causal=causal, implementation="cudnn")
    except NotImplementedError:   # jax's cuDNN checks: a shape or layout it does not take
      pass
  attn_mask = None if mask is None else mask[:, None, None, :]
  return jax.nn.dot_product_attention(q, k, v, mask=attn_mask, is_causal=causal,
                                      implementation="xla")


class SelfAttention(nn.Module):
  """Multi-head self-attention. x [B, L, D], mask [B, L] bool (True = real token; padding
  trails) or None.

  q, k and v come from one fused [D, 3D] kernel whose output columns are [q | k | v], each
  laid out head by head."""
  num_heads: int
  causal: bool = False
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, mask=None):
    batch, length, width = x.shape
    head_dim = width // self.num_heads
    qkv = dense(3 * width, ("embed", "heads"), self.dtype, "qkv")(x)
    qkv = qkv.reshape(batch, length, 3, self.num_heads, head_dim)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    out = attention(q, k, v, mask, self.causal)
    return dense(width, ("heads", "embed"), self.dtype, "out")(out.reshape(batch, length, width))


class EncoderBlock(nn.Module):
  """Pre-LN (norm_first): x + attn(ln1(x)), then x + mlp(ln2(x)).
  Post-LN (BERT): ln1(x + attn(x)), then ln2(x + mlp(x)). Shapes [B, L, D] -> [B, L, D].
  With `scanned`, returns (x, None) as nn.scan wants."""
  num_heads: int
  mlp_ratio: float = 4.0
  causal: bool = False
  dtype: Dtype = jnp.float32
  act: str = "gelu_tanh"
  norm_first: bool = True
  eps: float = 1e-6
  mlp_dim: int = 0
  scanned: bool = False

  @nn.compact
  def __call__(self, x, mask=None):
    hidden = self.mlp_dim or int(self.mlp_ratio * x.shape[-1])
    attn = SelfAttention(self.num_heads, self.causal, self.dtype, name="attn")
    mlp = Mlp(hidden, self.dtype, self.act, name="mlp")
    ln1, ln2 = layer_norm(self.dtype, "ln1", self.eps), layer_norm(self.dtype, "ln2", self.eps)
    if self.norm_first:
      x = x + attn(ln1(x), mask)
      x = constrain(x + mlp(ln2(x)))
    else:
      x = ln1(x + attn(x, mask))
      x = constrain(ln2(x + mlp(x)))
    return (x, None) if self.scanned else x


class Encoder(nn.Module):
  """`depth` EncoderBlocks and (if `final_norm`) a final LayerNorm. [B, L, D] -> [B, L, D].

  remat: "none", "full" (recompute each block in the backward pass) or "dots" (keep matmul
  outputs, recompute the rest). scan: one scanned block over stacked parameters (compiles
  once whatever the depth)."""
  depth: int
  num_heads: int
  mlp_ratio: float = 4.0
  causal: bool = False
  dtype: Dtype = jnp.float32
  act: str = "gelu_tanh"
  norm_first: bool = True
  eps: float = 1e-6
  mlp_dim: int = 0
  final_norm: bool = True
  remat: str = "none"
  scan: bool = False

  @nn.compact
  def __call__(self, x, mask=None):
    x = constrain(x)
    block = EncoderBlock
    if self.remat != "none":
      block = nn.remat(block, policy=REMAT_POLICIES[self.remat], prevent_cse=not self.scan)
    kwargs = dict(num_heads=self.num_heads, mlp_ratio=self.mlp_ratio, causal=self.causal,
                  dtype=self.dtype, act=self.act, norm_first=self.norm_first, eps=self.eps,
                  mlp_dim=self.mlp_dim)
    if self.scan:
      scanned = nn.scan(block, variable_axes={"params": 0}, split_rngs={"params": True},
                        in_axes=nn.broadcast, length=self.depth,
                        metadata_params={nn.PARTITION_NAME: "layers"})
      x, _ = scanned(**kwargs, scanned=True, name="blocks")(x, mask)
    else:
      for i in range(self.depth):
        x = block(**kwargs, name=f"block_{i}")(x, mask)
    if self.final_norm:
      x = layer_norm(self.dtype, "ln_final", self.eps)(x)
    return x


def stack_blocks(encoder_params: dict) -> dict:
  """{block_0: tree, block_1: tree, ..., rest} -> {blocks: stacked tree, rest}: the layout of
  an Encoder with scan=True. Works on numpy or jax arrays."""
  names = sorted((k for k in encoder_params if re.fullmatch(r"block_\d+", k)),
                 key=lambda k: int(k.split("_")[1]))
  if not names:
    return dict(encoder_params)
  out = {k: v for k, v in encoder_params.items() if k not in names}
  stack = np.stack if all(isinstance(x, np.ndarray) for n in names
                          for x in jax.tree.leaves(encoder_params[n])) else jnp.stack
  out["blocks"] = jax.tree.map(lambda *xs: stack(xs), *[encoder_params[n] for n in names])
  return out


def unstack_blocks(encoder_params: dict) -> dict:
  """Inverse of stack_blocks."""
  if "blocks" not in encoder_params:
    return dict(encoder_params)
  out = {k: v for k, v in encoder_params.items() if k != "blocks"}
  depth = jax.tree.leaves(encoder_params["blocks"])[0].shape[0]
  for i in range(depth):
    out[f"block_{i}"] = jax.tree.map(lambda x: x[i], encoder_params["blocks"])
  return out


def map_transformers(params: dict, fn) -> dict:
  """Applies fn to every `transformer` (Encoder) subtree of a nested params dict."""
  out = {}
  for k, v in params.items():
    if k == "transformer" and isinstance(v, dict):
      out[k] = fn(v)
    elif isinstance(v, dict):
      out[k] = map_transformers(v, fn)
    else:
      out[k] = v
  return out


class MapHead(nn.Module):
  """Multihead attention pooling (big_vision MAPHead, SigLIP): a learned probe attends over
  x [B, L, D]; then probe + MLP(LN(probe)). Returns [B, D]."""
  num_heads: int
  mlp_dim: int
  dtype: Dtype = jnp.float32
  act: str = "gelu_tanh"
  eps: float = 1e-6

  @nn.compact
  def __call__(self, x):
    batch, length, width = x.shape
    head_dim = width // self.num_heads
    probe = self.param("probe", nn.with_logical_partitioning(
        nn.initializers.xavier_uniform(), (None, None, "embed")), (1, 1, width))
    q = dense(width, ("embed", "heads"), self.dtype, "query")(
        jnp.broadcast_to(probe, (batch, 1, width)).astype(self.dtype))
    kv = dense(2 * width, ("embed", "heads"), self.dtype, "kv")(x)
    q = q.reshape(batch, 1, self.num_heads, head_dim)
    kv = kv.reshape(batch, length, 2, self.num_heads, head_dim)
    out = attention(q, kv[:, :, 0], kv[:, :, 1])
    y = dense(width, ("heads", "embed"), self.dtype, "out")(out.reshape(batch, 1, width))
    y = y + Mlp(self.mlp_dim, self.dtype, self.act, name="mlp")(
        layer_norm(self.dtype, "ln", self.eps)(y))
    return y[:, 0]
