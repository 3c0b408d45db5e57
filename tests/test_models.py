"""Towers, the multi-tower model, its loss scalars and the optimizer's masks/schedule."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax

from xmodal import losses, optim, train
from xmodal.data import tokenizer as tokenizer_lib
from xmodal.models import model as model_lib
from tiny import make_tiny_config


def _init(config):
  model = model_lib.MultiTower(config)
  params = model_lib.unbox(model.init(jax.random.key(0), model_lib.dummy_inputs(config, 2))["params"])
  return model, params


def test_embeddings_are_unit_vectors_of_embed_dim():
  config = make_tiny_config()
  model, params = _init(config)
  tok = tokenizer_lib.ByteTokenizer(config.data.context_length)
  images = np.random.default_rng(0).integers(0, 255, (3, 16, 16, 3), np.uint8)
  out = model.apply({"params": params}, {"image": images,
                                         "text": tok.encode_batch(["a", "b c", "d e f"])})
  for m in ("image", "text"):
    assert out[m].shape == (3, config.model.embed_dim) and out[m].dtype == jnp.float32
    np.testing.assert_allclose(np.linalg.norm(out[m], axis=1), 1.0, rtol=1e-5)
  # One modality alone works too (for encoding in evaluation and notebooks).
  assert set(model.apply({"params": params}, {"text": tok.encode_batch(["x"])})) == {"text"}


def test_param_names_follow_modality_tower_layer():
  _, params = _init(make_tiny_config())
  names = {"/".join(k.key for k in path) for path, _ in jax.tree_util.tree_leaves_with_path(params)}
  assert "image/encoder/transformer/block_0/mlp/fc1/kernel" in names
  assert "text/encoder/token_embed/embedding" in names
  assert "image/head/kernel" in names and "logit_scale" in names


def test_temperature_and_bias_initialised_as_clip_and_siglip():
  _, params = _init(make_tiny_config(**{"loss.name": "softmax"}))
  np.testing.assert_allclose(np.exp(params["logit_scale"]), 1 / 0.07, rtol=1e-5)
  assert "logit_bias" not in params
  _, params = _init(make_tiny_config(**{"loss.name": "sigmoid"}))
  np.testing.assert_allclose(params["logit_scale"], math.log(10.0), rtol=1e-6)
  np.testing.assert_allclose(params["logit_bias"], -10.0)


def test_text_padding_does_not_change_the_embedding():
  for causal, pool in [(True, "eot"), (False, "mean"), (False, "eot")]:
    config = make_tiny_config(**{"towers.text.causal": causal, "towers.text.pool": pool})
    model, params = _init(config)
    tok = tokenizer_lib.ByteTokenizer(config.data.context_length)
    short = tok.encode_batch(["a red circle."])
    longer = np.concatenate([short, np.zeros((1, 8), np.int32)], axis=1)[:, :config.data.context_length]
    assert longer.shape[1] == config.data.context_length
    a = model.apply({"params": params}, {"text": short[:, :20]})["text"]
    b = model.apply({"params": params}, {"text": longer})["text"]
    np.testing.assert_allclose(a, b, atol=1e-5, err_msg=f"causal={causal} pool={pool}")


def test_bfloat16_compute_keeps_float32_params_and_close_outputs():
  config = make_tiny_config()
  model, params = _init(config)
  config_bf16 = make_tiny_config(**{"model.compute_dtype": "bfloat16"})
  model_bf16 = model_lib.MultiTower(config_bf16)
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(
      model_bf16.init(jax.random.key(0), model_lib.dummy_inputs(config_bf16))["params"]))
  images = np.random.default_rng(1).integers(0, 255, (4, 16, 16, 3), np.uint8)
  a = model.apply({"params": params}, {"image": images})["image"]
  b = model_bf16.apply({"params": params}, {"image": images})["image"]
  assert b.dtype == jnp.float32
  assert float(jnp.max(jnp.abs(a - b))) < 0.05
  assert float(jnp.max(jnp.abs(a - b))) > 0  # it really ran in bfloat16


def test_weight_decay_skips_norms_biases_and_scale():
  _, params = _init(make_tiny_config())
  mask = optim.decay_mask(params)
  assert mask["image"]["encoder"]["transformer"]["block_0"]["mlp"]["fc1"]["kernel"]
  assert not mask["image"]["encoder"]["transformer"]["block_0"]["mlp"]["fc1"]["bias"]
  assert not mask["image"]["encoder"]["transformer"]["ln_final"]["scale"]
  assert not mask["logit_scale"]
  # Zero gradient: only decayed leaves move, by lr * wd * value.
  config = make_tiny_config(**{"optim.weight_decay": 0.5, "optim.grad_clip": 0.0})
  tx = optim.make_optimizer(config)
  state = tx.init(params)
  zeros = jax.tree.map(jnp.zeros_like, params)
  for _ in range(3):   # step into the warmup so the learning rate is non-zero
    updates, state = tx.update(zeros, state, params)
  assert float(updates["logit_scale"]) == 0.0
  assert float(jnp.abs(updates["text"]["encoder"]["transformer"]["ln_final"]["scale"]).max()) == 0
  kernel = params["text"]["head"]["kernel"]
  lr = optim.schedule(config)(2)
  np.testing.assert_allclose(updates["text"]["head"]["kernel"], -lr * 0.5 * kernel, rtol=1e-5)


def test_schedule_warms_up_then_decays_to_the_floor():
  config = make_tiny_config(**{"optim.lr": 1.0, "optim.warmup_steps": 10,
                               "train.total_steps": 110, "optim.end_lr_fraction": 0.1})
  lr = optim.schedule(config)
  np.testing.assert_allclose([lr(0), lr(5), lr(10)], [0.0, 0.5, 1.0], atol=1e-6)
  np.testing.assert_allclose(lr(60), 0.1 + 0.9 * 0.5, rtol=1e-5)
  np.testing.assert_allclose(lr(110), 0.1, rtol=1e-5)
  assert isinstance(optim.make_optimizer(config), optax.GradientTransformation)


def test_scale_is_clamped_after_the_step_and_logged_as_the_loss_used_it():
  """loss.max_scale bounds logit_scale after each optimizer step, to the float32 of
  log(max_scale) exactly (open_clip clamps the parameter the same way); the step logs the
  scale its loss was computed with; a frozen scale above the bound is left alone."""
  config = make_tiny_config(**{"loss.impl": "dense", "loss.max_scale": 100.0,
                               "optim.warmup_steps": 1, "optim.lr": 0.5})
  model, params = _init(config)
  params = {**params, "logit_scale": jnp.float32(np.log(150.0))}
  rng = np.random.default_rng(0)
  tok = tokenizer_lib.ByteTokenizer(config.data.context_length)
  batch = {"image": rng.integers(0, 255, (8, 16, 16, 3), np.uint8),
           "text": tok.encode_batch([f"caption {i}" for i in range(8)])}
  objective = losses.make_objective(config, None)

  def run(config, params, steps=2):
    tx = optim.make_optimizer(config)
    state = {"params": params, "opt_state": tx.init(params), "step": jnp.zeros((), jnp.int32)}
    step = jax.jit(train.make_train_step(model, tx, objective, optim.schedule(config)))
    history, logged = [], []
    for _ in range(steps):     # step 0 has learning rate 0 (warmup): an update of 0
      state, metrics = step(state, batch)
      history.append(float(state["params"]["logit_scale"]))
      logged.append(float(metrics["scale"]))
    return history, logged

  history, logged = run(config, params)
  assert history[0] == float(np.float32(np.log(100.0)))       # clamped, exactly
  assert history[1] < history[0]                               # and free below the bound
  np.testing.assert_allclose(logged, [150.0, 100.0], rtol=1e-5)   # what each loss used
  # Below the bound an update is applied as it is; a frozen scale is never touched.
  tx = optim.make_optimizer(config)
  small = {**params, "logit_scale": jnp.float32(np.log(20.0))}
  grads = jax.tree.map(jnp.zeros_like, small)
  grads["logit_scale"] = jnp.float32(-1.0)
  opt_state = tx.init(small)
  for _ in range(2):
    updates, opt_state = tx.update(grads, opt_state, small)
  assert float(updates["logit_scale"]) > 0
  assert float(optax.apply_updates(small, updates)["logit_scale"]) == float(
      small["logit_scale"] + updates["logit_scale"])
  frozen = config.copy_and_resolve_references()
  frozen.train.frozen = ("logit_scale",)
  history, _ = run(frozen, params)
  assert history == [float(np.float32(np.log(150.0)))] * 2


def test_a_terms_own_scale_is_clamped_like_the_shared_one():
  """optim.clamp_scale bounds every loss scale: the shared logit_scale and each term's own
  logit_scale_<term> (losses/terms.py, scale="own"); other params pass through."""
  bound = float(np.float32(np.log(100.0)))
  params = {"logit_scale": jnp.float32(np.log(150.0)), "logit_scale_cw": jnp.float32(6.0),
            "logit_bias_cw": jnp.float32(9.0), "w": jnp.ones(2)}
  updates = {k: jnp.zeros_like(v) for k, v in params.items()}
  out, _ = optim.clamp_scale(100.0).update(updates, optax.EmptyState(), params)
  new = optax.apply_updates(params, out)
  assert float(new["logit_scale"]) == bound and float(new["logit_scale_cw"]) == bound
  assert float(new["logit_bias_cw"]) == 9.0 and np.all(np.asarray(new["w"]) == 1.0)


def test_token_features_beside_the_pooled_embedding():
  """towers.<m>.tokens: '<m>:tokens' (unit rows through the pooled head, or their own
  token_dim head) and '<m>:mask' (1 = a real token, text padding 0); the pooled embedding
  and the param tree are those of the same tower without tokens."""
  plain = make_tiny_config()
  config = make_tiny_config(**{"towers.image.tokens": True, "towers.text.tokens": True,
                               "towers.text.token_dim": 8})
  model, params = _init(config)
  _, plain_params = _init(plain)
  names = lambda p: {jax.tree_util.keystr(k)  # noqa: E731
                     for k, _ in jax.tree_util.tree_leaves_with_path(p)}
  assert names(params) - names(plain_params) == {"['text']['token_head']['kernel']",
                                                 "['text']['token_head']['bias']"}
  tok = tokenizer_lib.ByteTokenizer(config.data.context_length)
  images = np.random.default_rng(0).integers(0, 255, (2, 16, 16, 3), np.uint8)
  inputs = {"image": images, "text": tok.encode_batch(["a b", "a longer caption"])}
  out = model.apply({"params": params}, inputs)
  assert out["image:tokens"].shape == (2, 4, config.model.embed_dim)   # (16 / 8)^2 patches
  assert out["text:tokens"].shape == (2, config.data.context_length, 8)
  np.testing.assert_allclose(np.linalg.norm(out["image:tokens"], axis=-1), 1.0, rtol=1e-5)
  lengths = (np.asarray(inputs["text"]) != tok.pad_id).sum(1)
  np.testing.assert_array_equal(np.asarray(out["text:mask"]).sum(1), lengths)
  assert np.all(np.asarray(out["image:mask"]) == 1)
  same = model_lib.MultiTower(plain).apply({"params": {k: v for k, v in params.items()
                                                       if k != "text"} | {
      "text": {k: v for k, v in params["text"].items() if k != "token_head"}}}, inputs)
  for m in ("image", "text"):
    np.testing.assert_allclose(out[m], same[m], rtol=1e-6)
