"""The multi-tower model: {modality: input} -> {modality: unit-norm embedding [B, embed_dim]}.

Towers are built from `config.towers` (the key is the modality name, `kind` picks the
module); each is followed by a head to `model.embed_dim` (bias-free linear by default, an MLP
projector, or none). The model also
owns the loss's learnable scalars: `logit_scale` (log of the temperature's inverse, CLIP
style), for the sigmoid loss `logit_bias`, and `logit_scale_<term>` / `logit_bias_<term>`
for loss terms with their own (losses/terms.py). Parameter names are
`{modality}/encoder/block_3/mlp/fc1/kernel`, `{modality}/head/kernel`, `logit_scale`, ...
A tower given K inputs per example ([B, K, ...], e.g. K captions) embeds them as B*K rows
and returns [B, K, D].
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from xmodal import towers as towers_lib
from xmodal.losses import terms as loss_terms
from xmodal.models import layers
from xmodal.models import modalities, text, vit  # noqa: F401 (kept as model.vit, ...)



def resolved_vit(cfg: ml_collections.ConfigDict) -> dict:
  """The ViT tower's size fields with `variant` ("B/16") applied over them."""
  return towers_lib.get("vit").resolved(cfg)


def with_defaults(cfg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The tower section over its kind's defaults (configs saved before a field existed)."""
  return towers_lib.with_defaults(cfg)


def build_tower(cfg: ml_collections.ConfigDict, config: ml_collections.ConfigDict, name: str,
                dtype) -> nn.Module:
  """One tower module from its config section, built by its kind's module (xmodal/towers)."""
  cfg = with_defaults(cfg)
  return towers_lib.get(cfg.kind).build(cfg, config, dtype, name)


class Tower(nn.Module):
  """Encoder followed by a head (linear, or none); output float32 [B, embed_dim], unit
  vectors unless normalize=False."""
  cfg: ml_collections.ConfigDict
  config: ml_collections.ConfigDict
  dtype: object

  @nn.compact
  def __call__(self, x, train: bool = False, normalize: bool = True):
    """-> z [B, D], or (z, tokens [B, T, D'], mask [B, T]) with towers.<name>.tokens."""
    features = build_tower(self.cfg, self.config, "encoder", self.dtype)(x, train=train)
    cfg = with_defaults(self.cfg)
    tokens = None
    if cfg.get("tokens"):
      features, tokens, mask = features
    # A kind from outside xmodal may declare no head fields: a linear head, no bias.
    head = cfg.get("head", "linear")
    embed_dim = self.config.model.embed_dim
    if head == "linear":
      project = layers.dense(embed_dim, ("embed", "proj"), self.dtype, "head",
                             use_bias=cfg.get("head_bias", False))
    elif head == "mlp":        # projector (e.g. over a frozen pretrained encoder)
      hidden = cfg.get("head_hidden", 0) or features.shape[-1]
      inner = layers.dense(hidden, ("embed", "mlp"), self.dtype, "head_hidden")
      outer = layers.dense(embed_dim, ("mlp", "proj"), self.dtype, "head",
                           use_bias=cfg.get("head_bias", False))
      project = lambda f: outer(nn.gelu(inner(f)))  # noqa: E731
    else:
      project = lambda f: f  # noqa: E731
    z = self._unit(project(features), normalize)
    if tokens is None:
      return z
    # FILIP: each token through the pooled head (shared weights), or its own small head
    token_head = (layers.dense(cfg.token_dim, ("embed", "proj"), self.dtype, "token_head")
                  if cfg.token_dim else project)
    return z, self._unit(token_head(tokens), normalize), mask

  @staticmethod
  def _unit(z, normalize):
    z = z.astype(jnp.float32)
    if not normalize:
      return z
    return z / jnp.maximum(jnp.linalg.norm(z, axis=-1, keepdims=True), 1e-12)


VIEW = ":view"          # batch / embedding key suffix of a second augmented view


class MultiTower(nn.Module):
  """Maps {modality: input} (any subset of config.towers) to {modality: embedding}."""
  config: ml_collections.ConfigDict

  @nn.compact
  def __call__(self, inputs: dict, train: bool = False, normalize: bool = True) -> dict:
    """train: turns on train-time randomness (patch dropout; needs a "dropout" rng).
    normalize=False returns the heads' raw outputs (for parity checks against references)."""
    config = self.config
    dtype = jnp.bfloat16 if config.model.compute_dtype == "bfloat16" else jnp.float32
    # '<tower>:view' (data.views): a second augmented view, through the same tower
    tower_of = {m: m.removesuffix(VIEW) for m in inputs}
    unknown = set(tower_of.values()) - set(config.towers.keys())
    if unknown:
      raise ValueError(f"inputs {sorted(unknown)} have no tower; towers: {list(config.towers)}")
    # The loss's learnable scalars: logit_scale (and logit_bias), and each loss term's own.
    for name, value in loss_terms.scalars(config).items():
      self.param(name, nn.initializers.constant(value), ())
    out = {}
    towers = {t: Tower(config.towers[t], config, dtype, name=t)
              for t in dict.fromkeys(tower_of.values())}
    for m, x in inputs.items():
      tower = towers[tower_of[m]]
      extra = x.ndim - _input_rank(config, tower_of[m])
      if extra == 1:      # [B, K, ...]: K inputs per example (data.captions="k")
        z = tower(x.reshape((-1,) + x.shape[2:]), train, normalize)
        out[m] = z.reshape(x.shape[:2] + z.shape[1:])
      else:
        out[m] = tower(x, train, normalize)
      if isinstance(out[m], tuple):           # token features (towers.<m>.tokens)
        if extra == 1:
          raise ValueError(f"config.towers.{m}.tokens: not with K inputs per example")
        out[m], out[f"{m}:tokens"], out[f"{m}:mask"] = out[m]
    return out


def _input_rank(config, modality) -> int:
  """Rank of one example's input batch [B, ...] (the kind's `input_spec` plus the batch)."""
  cfg = config.towers[modality]
  return len(towers_lib.get(cfg.kind).input_spec(with_defaults(cfg), config)[0]) + 1


def initial_scale_and_bias(config) -> tuple[float, float | None]:
  """(scale, bias or None) of the shared logit_scale / logit_bias at initialisation."""
  values = loss_terms.scalars(config)
  bias = values.get("logit_bias")
  return math.exp(values["logit_scale"]), bias


def unbox(params):
  """Strips the logical-axis boxes (nn.Partitioned) off a params tree, adding no sharding
  constraint (flax's own unbox adds one when axis rules are active)."""
  return jax.tree.map(lambda p: p.value if isinstance(p, nn.Partitioned) else p, params,
                      is_leaf=lambda p: isinstance(p, nn.Partitioned))


def abstract_params(model, config):
  """Shapes of the params, with their logical-axis boxes: a pytree of nn.Partitioned
  around jax.ShapeDtypeStruct. Nothing is allocated."""
  return jax.eval_shape(lambda: model.init(jax.random.key(0), dummy_inputs(config))["params"])


def dummy_inputs(config, batch: int = 1, towers=None) -> dict:
  """Zero inputs of the right shapes and dtypes (each kind's `input_spec`), for init and
  shape inference (of every tower, or of `towers`)."""
  out = {}
  for m, cfg in config.towers.items():
    if towers is not None and m not in towers:
      continue
    shape, dtype = towers_lib.get(cfg.kind).input_spec(with_defaults(cfg), config)
    out[m] = jnp.zeros((batch, *shape), dtype)
  return out
