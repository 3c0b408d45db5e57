"""Tower kinds as modules (xmodal/towers): the registry, the contract, and a kind from
outside the package, named by its module path in the config, that trains."""

import textwrap

import numpy as np
import pytest

from xmodal import config as config_lib, default_config, metrics as metrics_lib, towers, train
from xmodal.models import model as model_lib
from tiny import make_tiny_config

EXTERNAL = '''
"""A tower kind that lives outside xmodal: a bag of values -> 2-layer MLP."""
import dataclasses

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from xmodal.fields import Field

FIELDS = dict(
    dim=Field(6, "values per example", gt=0),
    width=Field(32, "hidden units", gt=0),
)


class Bag(nn.Module):
  width: int

  @nn.compact
  def __call__(self, x, train=False):
    h = nn.gelu(nn.Dense(self.width, name="fc1")(x.astype(jnp.float32)))
    return nn.Dense(self.width, name="fc2")(h)


def build(cfg, config, dtype, name):
  return Bag(cfg.width, name=name)


def input_spec(cfg, config):
  return (cfg.dim,), np.dtype(np.float32)


@dataclasses.dataclass(frozen=True)
class Prepare:
  dim: int

  def __call__(self, value, train, rng):
    return np.asarray(value, np.float32).reshape(self.dim)


def preparer(cfg, config):
  return Prepare(cfg.dim)


def synthetic(cfg, config, labels, rng, num_classes):
  protos = np.random.default_rng(7).normal(0, 1, (num_classes, cfg.dim))
  return (protos[labels] + rng.normal(0, 0.3, (len(labels), cfg.dim))).astype(np.float32)
'''


@pytest.fixture
def external_kind(tmp_path, monkeypatch):
  package = tmp_path / "mytowers"
  package.mkdir()
  (package / "__init__.py").write_text("")
  (package / "bag.py").write_text(textwrap.dedent(EXTERNAL))
  (package / "broken.py").write_text("FIELDS = {}\n")
  monkeypatch.syspath_prepend(str(tmp_path))
  towers.get.cache_clear()
  yield "mytowers.bag"
  towers.get.cache_clear()


def test_registry_lists_the_package_modules():
  assert towers.kinds() == ("audio", "signal", "text", "vector", "video", "vit", "volume")
  for kind in towers.kinds():
    module = towers.get(kind)
    assert all(hasattr(module, name) for name in towers.CONTRACT)
    assert towers.defaults(kind).kind == kind
  with pytest.raises(config_lib.ConfigError, match=r"unknown tower kind 'vti'; did you mean "
                                                   r"'vit'"):
    towers.get("vti")


def test_kind_errors_name_the_field(external_kind):
  config = make_tiny_config()
  config.towers.image.kind = "mytowers.nothing"
  with pytest.raises(config_lib.ConfigError, match=r"config.towers.image.kind: .*no module "
                                                   r"'mytowers.nothing'"):
    config_lib.validate(config, 1)
  config.towers.image = default_config.ConfigDict({"kind": "mytowers.broken"})
  with pytest.raises(config_lib.ConfigError, match=r"lacks \['build', 'input_spec'\]"):
    config_lib.validate(config, 1)


@pytest.mark.slow
def test_external_kind_validates_builds_and_trains(tmp_path, external_kind):
  """kind="mytowers.bag": its own fields are checked (typo hint included), the model builds
  it under the usual parameter names, and `train.train` on synthetic pairs learns it."""
  config = make_tiny_config(**{"data.source": "synthetic", "data.synthetic_classes": 4,
                               "data.synthetic_eval_size": 64, "train.total_steps": 30,
                               "optim.lr": 3e-3})
  bag = towers.defaults(external_kind)
  vec = default_config.tower_defaults("vector")
  vec.update(dict(width=32, depth=1, num_heads=2, features=8))
  config.towers = default_config.ConfigDict({"points": bag, "other": vec})
  config_lib.validate(config, 8)
  config.towers.points.dimm = 3
  with pytest.raises(config_lib.ConfigError, match=r"towers.points.dimm: unknown key; did you "
                                                   r"mean config.towers.points.dim\?"):
    config_lib.validate(config, 8)
  del config.towers.points["dimm"]
  params = model_lib.abstract_params(model_lib.MultiTower(config), config)
  assert set(params["points"]["encoder"]) == {"fc1", "fc2"}
  assert params["points"]["head"]["kernel"].value.shape == (32, 32)
  final = train.train(config, str(tmp_path / "run"))
  losses = [r["loss"] for r in metrics_lib.read_jsonl(str(tmp_path / "run")) if "loss" in r]
  assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.3, losses
  assert final["retrieval/points_to_other/class_top1"] > 0.8       # chance 0.25
