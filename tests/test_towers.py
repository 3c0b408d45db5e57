"""Tower options: scan / remat / ViT variants / MAP and sin-cos / patch dropout, and the
training regimes built on them: frozen towers (LiT), partial unfreezing, init from weights."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from xmodal import config as config_lib, convert, init as init_lib, losses, optim, train
from xmodal.data import tokenizer as tokenizer_lib
from xmodal.models import layers, model as model_lib, vit
from tiny import make_tiny_config


def _inputs(config, n=4, seed=0):
  rng = np.random.default_rng(seed)
  tok = tokenizer_lib.ByteTokenizer(config.data.context_length)
  size = config.data.image_size
  return {"image": rng.integers(0, 255, (n, size, size, 3), np.uint8),
          "text": tok.encode_batch([f"shape {i} {'x' * i}" for i in range(n)])}


def _init(config, seed=0):
  model = model_lib.MultiTower(config)
  params = model_lib.unbox(model.init(jax.random.key(seed), model_lib.dummy_inputs(config, 2))["params"])
  return model, params


def _set_all(config, **fields):
  for tower in config.towers.values():
    for k, v in fields.items():
      tower[k] = v
  return config


def test_scan_matches_unrolled_blocks_with_stacked_params():
  config = make_tiny_config()
  _set_all(config, depth=3)
  model, params = _init(config)
  scanned_config = _set_all(make_tiny_config(), depth=3, scan=True)
  scanned = model_lib.MultiTower(scanned_config)
  abstract = model_lib.abstract_params(scanned, scanned_config)
  stacked = layers.map_transformers(params, layers.stack_blocks)
  assert convert.check_params(stacked, abstract).ok
  spec = nn.get_partition_spec(abstract)
  assert tuple(spec["image"]["encoder"]["transformer"]["blocks"]["mlp"]["fc1"]["kernel"]) == \
      ("layers", "embed", "mlp")
  x = _inputs(config)
  a = model.apply({"params": params}, x)
  b = scanned.apply({"params": stacked}, x)
  for m in a:
    np.testing.assert_allclose(a[m], b[m], atol=1e-5)
  back = layers.map_transformers(stacked, layers.unstack_blocks)
  assert jax.tree.all(jax.tree.map(lambda u, v: bool(jnp.array_equal(u, v)), back, params))


def test_remat_policies_give_equal_gradients():
  config = make_tiny_config()
  x = _inputs(config)
  grads = {}
  for policy in ("none", "full", "dots"):
    cfg = _set_all(make_tiny_config(), remat=policy, depth=2)
    model, params = _init(cfg)

    def loss(p, model=model):
      z = model.apply({"params": p}, x)
      return jnp.sum((z["image"] @ z["text"].T) * jnp.eye(4)) - jnp.sum(z["image"] @ z["text"].T)

    grads[policy] = jax.jit(jax.grad(loss))(params)
  for policy in ("full", "dots"):
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), grads["none"],
                 grads[policy])


def test_vit_variants_have_the_standard_sizes():
  assert vit.parse_variant("B/16") == dict(width=768, depth=12, mlp_dim=3072, num_heads=12,
                                          patch_size=16)
  assert vit.parse_variant("L/14")["mlp_dim"] == 4096
  assert vit.parse_variant("g/14")["width"] == 1408
  with pytest.raises(ValueError):
    vit.parse_variant("Q/16")
  config = make_tiny_config(**{"towers.image.variant": "B/16", "data.image_size": 224})
  config_lib.validate(config, 8)
  params = model_lib.unbox(model_lib.abstract_params(model_lib.MultiTower(config), config))
  n = sum(np.prod(p.shape) for p in jax.tree.leaves(params["image"]["encoder"]))
  assert 85.5e6 < n < 86.5e6        # ViT-B/16 encoder: 85.8M
  bad = make_tiny_config(**{"towers.image.variant": "B/15"})
  with pytest.raises(config_lib.ConfigError, match="image_size"):
    config_lib.validate(bad, 8)


def test_map_head_sincos_and_patch_dropout():
  config = make_tiny_config(**{"towers.image.pool": "map", "towers.image.pos_embed": "sincos2d",
                               "towers.image.patch_dropout": 0.5, "data.image_size": 32})
  config_lib.validate(config, 8)
  model, params = _init(config)
  assert "map_head" in params["image"]["encoder"] and "pos_embed" not in params["image"]["encoder"]
  x = {"image": _inputs(config)["image"]}
  eval_a = model.apply({"params": params}, x)["image"]
  eval_b = model.apply({"params": params}, x)["image"]
  np.testing.assert_array_equal(eval_a, eval_b)
  t1 = model.apply({"params": params}, x, train=True, rngs={"dropout": jax.random.key(1)})["image"]
  t2 = model.apply({"params": params}, x, train=True, rngs={"dropout": jax.random.key(2)})["image"]
  assert np.abs(t1 - eval_a).max() > 1e-4 and np.abs(t1 - t2).max() > 1e-4
  np.testing.assert_allclose(np.linalg.norm(t1, axis=1), 1.0, rtol=1e-5)
  with pytest.raises(Exception):         # train-time dropout needs its rng
    model.apply({"params": params}, x, train=True)
  # Patch dropout keeps round(L * (1 - rate)) tokens, different ones per example.
  tokens = jnp.arange(16.0).reshape(1, 16, 1).repeat(2, axis=0)
  kept = vit.patch_dropout(tokens, 0.75, jax.random.key(0))
  assert kept.shape == (2, 4, 1) and len(set(np.asarray(kept[0, :, 0]).tolist())) == 4


def _one_step(config, params=None):
  model = model_lib.MultiTower(config)
  tx = optim.make_optimizer(config)
  if params is None:
    _, params = _init(config)
  state = {"params": params, "opt_state": tx.init(params), "step": jnp.zeros((), jnp.int32)}
  step = jax.jit(train.make_train_step(model, tx, losses.make_objective(config, None),
                                       optim.schedule(config), seed=config.seed))
  for _ in range(3):        # out of warmup's zero learning rate
    state, metrics = step(state, _inputs(config, 8))
  assert np.isfinite(metrics["loss"])
  return params, state["params"]


def _changed(a, b):
  return {n for n, x, y in zip(optim.param_names(a), jax.tree.leaves(a), jax.tree.leaves(b))
          if not np.array_equal(x, y)}


def test_frozen_tower_gets_no_updates_and_unfrozen_exceptions_do(monkeypatch):
  config = make_tiny_config(**{"loss.impl": "dense", "train.frozen": ("image/.*",),
                               "train.unfrozen": ("image/head/.*",),
                               "towers.image.patch_dropout": 0.25})
  before, after = _one_step(config)
  changed = _changed(before, after)
  assert "image/head/kernel" in changed
  assert not any(n.startswith("image/encoder") for n in changed)
  assert any(n.startswith("text/encoder") for n in changed) and "logit_scale" in changed
  bad = make_tiny_config(**{"train.frozen": ("vision/.*",)})
  with pytest.raises(ValueError, match="vision"):
    optim.make_optimizer(bad).init(_init(bad)[1])


def test_init_from_converted_weights_by_regex_map(tmp_path):
  from safetensors.numpy import save_file
  config = make_tiny_config()
  _, source = _init(config, seed=1)
  path = str(tmp_path / "params.safetensors")
  save_file({k: np.asarray(v) for k, v in convert.flatten(source).items()}, path)
  # Into a scanned model of another seed: only the text tower, by regex.
  dst_config = _set_all(make_tiny_config(), scan=True)
  _, dst = _init(dst_config, seed=2)
  new, names = init_lib.assign(dst, init_lib.read_source(path), (("text/(.*)", r"text/\1"),))
  assert names and all(n.startswith("text/") for n in names)
  unscanned = layers.map_transformers(new["text"], layers.unstack_blocks)
  np.testing.assert_array_equal(unscanned["encoder"]["transformer"]["block_0"]["mlp"]["fc1"]["kernel"],
                                source["text"]["encoder"]["transformer"]["block_0"]["mlp"]["fc1"]["kernel"])
  np.testing.assert_array_equal(new["image"]["head"]["kernel"], dst["image"]["head"]["kernel"])
  with pytest.raises(ValueError, match="matches no model parameter"):
    init_lib.assign(dst, init_lib.read_source(path), (("audio/(.*)", r"\1"),))
  with pytest.raises(ValueError, match="source param"):
    init_lib.assign(dst, init_lib.read_source(path), (("text/(.*)", r"txt/\1"),))


def test_frozen_params_init_did_not_load_are_refused_or_named(tmp_path, caplog):
  """LiT without its weights: frozen matrices that init did not load would stay random,
  an error naming config.train.frozen; a frozen scalar (a fixed temperature) is one line."""
  from safetensors.numpy import save_file
  config = _set_all(make_tiny_config(**{"train.frozen": ("image/.*",)}), scan=True)
  _, params = _init(config)
  with pytest.raises(config_lib.ConfigError,
                     match=r"^config.train.frozen: \d+ frozen weight matrices \(e.g. image/"):
    init_lib.check_frozen(config, params)
  # The image tower loaded from an unscanned source: nothing frozen is left random.
  _, source = _init(make_tiny_config(), seed=1)
  path = str(tmp_path / "params.safetensors")
  save_file({k: np.asarray(v) for k, v in convert.flatten(source).items()}, path)
  config.init.source, config.init.map = path, ((r"image/(.*)", r"image/\1"),)
  loaded, names = init_lib.assign(params, init_lib.read_source(path), config.init.map)
  assert any("/block_0/" in n for n in names)          # named unscanned ...
  with caplog.at_level("WARNING"):
    init_lib.check_frozen(config, loaded, names)       # ... matched to the scanned params
  assert not caplog.records
  # Only part of the tower loaded: the rest is named.
  config.init.map = ((r"image/encoder/(.*)", r"image/encoder/\1"),)
  loaded, names = init_lib.assign(params, init_lib.read_source(path), config.init.map)
  with pytest.raises(config_lib.ConfigError, match=r"e.g. image/head/kernel"):
    init_lib.check_frozen(config, loaded, names)
  config.train.frozen = ("logit_scale",)             # a fixed temperature: meant, said once
  with caplog.at_level("WARNING"):
    init_lib.check_frozen(config, loaded, names)
  assert [r.getMessage() for r in caplog.records] == [
      f"config.train.frozen: frozen params not loaded from {path} keep their initial "
      f"values: logit_scale"]


def test_scanned_towers_need_a_layers_rule_and_shard_over_a_mesh():
  config = _set_all(make_tiny_config(**{"mesh.fsdp": 2, "mesh.model": 2}), scan=True)
  config_lib.validate(config, 8)
  from xmodal import parallel, sharding
  mesh = parallel.make_mesh(config)
  model = model_lib.MultiTower(config)
  shardings = sharding.param_shardings(model, config, mesh)
  spec = shardings["text"]["encoder"]["transformer"]["blocks"]["mlp"]["fc1"]["kernel"].spec
  assert tuple(spec) == (None, "fsdp", "model")
  config.sharding.rules = tuple(r for r in config.sharding.rules if r[0] != "layers")
  with pytest.raises(config_lib.ConfigError, match="layers"):
    config_lib.validate(config, 8)
