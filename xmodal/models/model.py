"""The multi-tower model: {modality: input} -> {modality: unit-norm embedding [B, embed_dim]}.

Towers are built from `config.towers` (the key is the modality name, `kind` picks the
module); each is followed by a head to `model.embed_dim` (bias-free linear by default, an MLP
projector, or none). The model also
owns the loss's learnable scalars: `logit_scale` (log of the temperature's inverse, CLIP
style) and, for the sigmoid loss, `logit_bias`. Parameter names are
`{modality}/encoder/block_3/mlp/fc1/kernel`, `{modality}/head/kernel`, `logit_scale`, ...
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from xmodal import towers
from xmodal.models import layers
from xmodal.models import modalities, text, vit  # noqa: F401 (kept as model.vit, ...)

LOSS_INIT = {  # (scale, bias) defaults: CLIP 1/0.07; SigLIP t=10, b=-10
    "softmax": (1 / 0.07, None),
    "sigmoid": (10.0, -10.0),
}


def resolved_vit(cfg: ml_collections.ConfigDict) -> dict:
  """The ViT tower's size fields with `variant` ("B/16") applied over them."""
  return towers.get("vit").resolved(cfg)


def with_defaults(cfg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The tower section over its kind's defaults (configs saved before a field existed)."""
  return towers.with_defaults(cfg)


def build_tower(cfg: ml_collections.ConfigDict, config: ml_collections.ConfigDict, name: str,
                dtype) -> nn.Module:
  """One tower module from its config section, built by its kind's module (xmodal/towers)."""
  cfg = with_defaults(cfg)
  return towers.get(cfg.kind).build(cfg, config, dtype, name)


class Tower(nn.Module):
  """Encoder followed by a head (linear, or none); output float32 [B, embed_dim], unit
  vectors unless normalize=False."""
  cfg: ml_collections.ConfigDict
  config: ml_collections.ConfigDict
  dtype: object

  @nn.compact
  def __call__(self, x, train: bool = False, normalize: bool = True):
    features = build_tower(self.cfg, self.config, "encoder", self.dtype)(x, train=train)
    cfg = with_defaults(self.cfg)
    # A kind from outside xmodal may declare no head fields: a linear head, no bias.
    head = cfg.get("head", "linear")
    embed_dim = self.config.model.embed_dim
    if head == "linear":
      z = layers.dense(embed_dim, ("embed", "proj"), self.dtype, "head",
                       use_bias=cfg.get("head_bias", False))(features)
    elif head == "mlp":        # projector (e.g. over a frozen pretrained encoder)
      hidden = cfg.get("head_hidden", 0) or features.shape[-1]
      h = nn.gelu(layers.dense(hidden, ("embed", "mlp"), self.dtype, "head_hidden")(features))
      z = layers.dense(embed_dim, ("mlp", "proj"), self.dtype, "head",
                       use_bias=cfg.get("head_bias", False))(h)
    else:
      z = features
    z = z.astype(jnp.float32)
    if not normalize:
      return z
    return z / jnp.maximum(jnp.linalg.norm(z, axis=-1, keepdims=True), 1e-12)


class MultiTower(nn.Module):
  """Maps {modality: input} (any subset of config.towers) to {modality: embedding}."""
  config: ml_collections.ConfigDict

  @nn.compact
  def __call__(self, inputs: dict, train: bool = False, normalize: bool = True) -> dict:
    """train: turns on train-time randomness (patch dropout; needs a "dropout" rng).
    normalize=False returns the heads' raw outputs (for parity checks against references)."""
    config = self.config
    dtype = jnp.bfloat16 if config.model.compute_dtype == "bfloat16" else jnp.float32
    unknown = set(inputs) - set(config.towers.keys())
    if unknown:
      raise ValueError(f"inputs {sorted(unknown)} have no tower; towers: {list(config.towers)}")
    scale, bias = initial_scale_and_bias(config)
    self.param("logit_scale", nn.initializers.constant(math.log(scale)), ())
    if bias is not None:
      self.param("logit_bias", nn.initializers.constant(bias), ())
    return {m: Tower(config.towers[m], config, dtype, name=m)(x, train, normalize)
            for m, x in inputs.items()}


def initial_scale_and_bias(config) -> tuple[float, float | None]:
  default_scale, default_bias = LOSS_INIT[config.loss.name]
  scale = config.loss.init_scale or default_scale
  if default_bias is None:
    return scale, None
  return scale, (config.loss.init_bias or default_bias)


def unbox(params):
  """Strips the logical-axis boxes (nn.Partitioned) off a params tree, adding no sharding
  constraint (flax's own unbox adds one when axis rules are active)."""
  return jax.tree.map(lambda p: p.value if isinstance(p, nn.Partitioned) else p, params,
                      is_leaf=lambda p: isinstance(p, nn.Partitioned))


def abstract_params(model, config):
  """Shapes of the params, with their logical-axis boxes: a pytree of nn.Partitioned
  around jax.ShapeDtypeStruct. Nothing is allocated."""
  return jax.eval_shape(lambda: model.init(jax.random.key(0), dummy_inputs(config))["params"])


def dummy_inputs(config, batch: int = 1) -> dict:
  """Zero inputs of the right shapes and dtypes (each kind's `input_spec`), for init and
  shape inference."""
  out = {}
  for m, cfg in config.towers.items():
    shape, dtype = towers.get(cfg.kind).input_spec(with_defaults(cfg), config)
    out[m] = jnp.zeros((batch, *shape), dtype)
  return out
