"""Kind "vector": feature vectors [B, features] (gene expression, tabular rows, cached
features of a frozen encoder) -> residual MLP, a transformer over feature tokens, or
identity (models/modalities.py VectorTower).

Record values: arrays (.npy, JSON lists, Parquet list columns, the expression row of an
AnnData `.h5ad` source, whose gene panel is `data.genes`). Preparation checks the length
is `features` ("wrong_shape" otherwise) and applies `transform` ("log1p" for counts).
"""

import dataclasses

import numpy as np

from xmodal.fields import Field
from xmodal.towers import _common, _transformer

EXTENSIONS = ("npy",)
DECODE = True

FIELDS = dict(
    **_common.transformer_fields(),
    features=Field(16, "input features per row", gt=0),
    encoder=Field("mlp", "'mlp' (residual MLP), 'transformer' (a token per feature) or "
                  "'identity' (cached features of a frozen encoder; pair with head='mlp')",
                  choices=("mlp", "transformer", "identity")),
    transform=Field("none", "of the values before the tower: 'none' or 'log1p' "
                    "(log(1 + x), for expression counts)", choices=("none", "log1p")),
    **_common.input_fields(),
)


def output_width(cfg) -> int:
  return cfg.features if cfg.encoder == "identity" else cfg.width


def build(cfg, config, dtype, name):
  return _transformer.build("VectorTower", cfg, dtype, name)


def input_spec(cfg, config):
  return (cfg.features,), np.dtype(np.float32)


@dataclasses.dataclass(frozen=True)
class Prepare:
  features: int
  transform: str = "none"

  def __call__(self, value, train: bool, rng) -> np.ndarray:
    from xmodal.data import bad   # noqa: PLC0415
    x = np.asarray(value, np.float32).reshape(-1) if np.ndim(value) <= 1 or (
        np.ndim(value) == 2 and 1 in np.shape(value)) else None
    if x is None or len(x) != self.features:
      raise bad.BadData("wrong_shape", f"vector of shape {np.shape(value)}; the tower reads "
                        f"{self.features} features")
    if self.transform == "log1p":
      if (x < 0).any():
        raise bad.BadData("wrong_shape", "negative values cannot be log1p-transformed counts")
      x = np.log1p(x)
    return x


def preparer(cfg, config) -> Prepare:
  return Prepare(cfg.features, cfg.transform)


def synthetic(cfg, config, labels, rng, num_classes):
  protos = np.random.default_rng(1234).normal(0, 1, (num_classes, cfg.features))
  return (protos[labels] + rng.normal(0, 0.5, (len(labels), cfg.features))).astype(np.float32)
