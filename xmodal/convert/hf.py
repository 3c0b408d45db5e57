"""Hugging Face `transformers` checkpoints (safetensors + config.json) -> xmodal params.

  CLIPModel    -> image: ViT (class token, ln_pre, quick_gelu, post-LN on the class token,
                  visual_projection as the head); text: causal, argmax (EOT) pooling, final
                  LN, text_projection as the head.
  SiglipModel  -> image: ViT (no class token, MAP head, gelu_tanh, head "none"); text:
                  bidirectional, last-position pooling, head Linear with bias.
  BertModel    -> text: post-LN, bidirectional, token-type + position embeddings, embedding
                  LayerNorm, mean ("mean") or [CLS] ("first") pooling, head "none".
"""

import ml_collections

from xmodal.convert import Converted, Report, StateDict, stack_if_scanned
from xmodal.models import vit as vit_lib

HF_ACTS = {"quick_gelu": "quick_gelu", "gelu": "gelu", "gelu_pytorch_tanh": "gelu_tanh",
           "gelu_new": "gelu_tanh", "gelu_fast": "gelu_tanh", "relu": "relu"}


def _act(name):
  if name not in HF_ACTS:
    raise ValueError(f"activation {name!r} has no xmodal equivalent; known: {sorted(HF_ACTS)}")
  return HF_ACTS[name]


def _pre_ln_blocks(sd: StateDict, root: str, depth: int) -> dict:
  """CLIP/SigLIP encoder layers {root}.encoder.layers.{i}.* -> {block_i: ...}."""
  out = {}
  for i in range(depth):
    p = f"{root}.encoder.layers.{i}."
    out[f"block_{i}"] = {
        "ln1": sd.norm(p + "layer_norm1"),
        "attn": {"qkv": sd.qkv(p + "self_attn.q_proj", p + "self_attn.k_proj",
                               p + "self_attn.v_proj"),
                 "out": sd.linear(p + "self_attn.out_proj")},
        "ln2": sd.norm(p + "layer_norm2"),
        "mlp": {"fc1": sd.linear(p + "mlp.fc1"), "fc2": sd.linear(p + "mlp.fc2")},
    }
  return out


def _tower(kind, c, **fields):
  section = dict(kind=kind, width=c["hidden_size"], depth=c["num_hidden_layers"],
                 num_heads=c["num_attention_heads"], mlp_dim=c["intermediate_size"],
                 act=_act(c.get("hidden_act", "gelu")), layer_norm_eps=float(c.get("layer_norm_eps", 1e-5)))
  section.update(fields)
  return ml_collections.ConfigDict(section)


def _pos(pos, image_size, patch, native, prefix):
  """Position table [N, D] -> [1, N', D], interpolated when image_size differs."""
  pos = pos[None]
  if image_size and image_size != native:
    grid = (image_size // patch,) * 2
    pos = vit_lib.resize_pos_embed(pos, grid, num_prefix=prefix)
  return pos


def convert_clip(state: dict, hf_config: dict, image: str = "image", text: str = "text",
                 image_size: int = 0, scan: bool = False) -> Converted:
  """`CLIPModel` weights -> xmodal. image_size != the checkpoint's interpolates positions."""
  sd = StateDict(state)
  tc, vc = hf_config["text_config"], hf_config["vision_config"]
  embed_dim = int(hf_config.get("projection_dim", 512))
  tc.setdefault("layer_norm_eps", 1e-5)
  vc.setdefault("layer_norm_eps", 1e-5)
  notes = []
  eos = tc.get("eos_token_id", 2)
  if eos not in (2, tc["vocab_size"] - 1):
    notes.append(f"text pooling is argmax of token ids; eos_token_id={eos} is not the highest id")
  native = vc["image_size"]
  patch = vc["patch_size"]
  vdepth, tdepth = vc["num_hidden_layers"], tc["num_hidden_layers"]

  v = "vision_model"
  image_params = {"encoder": {
      "patch_embed": sd.conv(f"{v}.embeddings.patch_embedding", bias=False),
      "cls": sd(f"{v}.embeddings.class_embedding").reshape(1, 1, -1),
      "pos_embed": _pos(sd(f"{v}.embeddings.position_embedding.weight"), image_size, patch,
                        native, 1),
      "ln_pre": sd.norm(f"{v}.pre_layrnorm"),
      "transformer": {**_pre_ln_blocks(sd, v, vdepth), "ln_final": sd.norm(f"{v}.post_layernorm")},
  }, "head": sd.linear("visual_projection", bias=False)}
  t = "text_model"
  text_params = {"encoder": {
      "token_embed": {"embedding": sd(f"{t}.embeddings.token_embedding.weight")},
      "pos_embed": sd(f"{t}.embeddings.position_embedding.weight")[None],
      "transformer": {**_pre_ln_blocks(sd, t, tdepth), "ln_final": sd.norm(f"{t}.final_layer_norm")},
  }, "head": sd.linear("text_projection", bias=False)}
  towers = {
      image: _tower("vit", vc, patch_size=patch, pool="cls", pre_norm=True, final_norm=True,
                    scan=scan),
      text: _tower("text", tc, vocab_size=tc["vocab_size"],
                   context_length=tc["max_position_embeddings"], causal=True, pool="argmax",
                   scan=scan),
  }
  params = {image: stack_if_scanned(image_params, scan), text: stack_if_scanned(text_params, scan)}
  if sd.has("logit_scale"):
    params["logit_scale"] = sd("logit_scale").reshape(())
  report = Report("hf CLIPModel", unused=sd.unused(ignore=(r".*position_ids",)), notes=notes)
  return Converted(towers, params, report, embed_dim,
                   {"image_size": image_size or native, "loss": "softmax",
                    "context_length": tc["max_position_embeddings"]})


def convert_siglip(state: dict, hf_config: dict, image: str = "image", text: str = "text",
                   image_size: int = 0, scan: bool = False) -> Converted:
  """`SiglipModel` weights -> xmodal (MAP-head ViT; text last-token pooling + biased head).
  The image tower's MAP output is the embedding (head "none"), so embed_dim is the vision
  width and the text head must project to it."""
  sd = StateDict(state)
  tc, vc = hf_config["text_config"], hf_config["vision_config"]
  tc.setdefault("layer_norm_eps", 1e-6)
  vc.setdefault("layer_norm_eps", 1e-6)
  tc.setdefault("hidden_act", "gelu_pytorch_tanh")
  vc.setdefault("hidden_act", "gelu_pytorch_tanh")
  native, patch = vc["image_size"], vc["patch_size"]
  embed_dim = vc["hidden_size"]
  t_head = sd.linear("text_model.head")
  if t_head["kernel"].shape[1] != embed_dim:
    raise ValueError(f"SigLIP text head projects to {t_head['kernel'].shape[1]}, the vision "
                     f"width is {embed_dim}: no shared embedding")
  v = "vision_model"
  h = f"{v}.head"
  image_params = {"encoder": {
      "patch_embed": sd.conv(f"{v}.embeddings.patch_embedding"),
      "pos_embed": _pos(sd(f"{v}.embeddings.position_embedding.weight"), image_size, patch,
                        native, 0),
      "transformer": {**_pre_ln_blocks(sd, v, vc["num_hidden_layers"]),
                      "ln_final": sd.norm(f"{v}.post_layernorm")},
      "map_head": {
          "probe": sd(f"{h}.probe").reshape(1, 1, -1),
          # torch packs [q; k; v] in in_proj: q goes to `query`, k and v to `kv`.
          "query": {"kernel": sd(f"{h}.attention.in_proj_weight")[:embed_dim].T,
                    "bias": sd(f"{h}.attention.in_proj_bias")[:embed_dim]},
          "kv": {"kernel": sd(f"{h}.attention.in_proj_weight")[embed_dim:].T,
                 "bias": sd(f"{h}.attention.in_proj_bias")[embed_dim:]},
          "out": sd.linear(f"{h}.attention.out_proj"),
          "ln": sd.norm(f"{h}.layernorm"),
          "mlp": {"fc1": sd.linear(f"{h}.mlp.fc1"), "fc2": sd.linear(f"{h}.mlp.fc2")},
      }}}
  t = "text_model"
  text_params = {"encoder": {
      "token_embed": {"embedding": sd(f"{t}.embeddings.token_embedding.weight")},
      "pos_embed": sd(f"{t}.embeddings.position_embedding.weight")[None],
      "transformer": {**_pre_ln_blocks(sd, t, tc["num_hidden_layers"]),
                      "ln_final": sd.norm(f"{t}.final_layer_norm")},
  }, "head": t_head}
  towers = {
      image: _tower("vit", vc, patch_size=patch, pool="map", head="none", scan=scan,
                    norm_mean=(0.5, 0.5, 0.5), norm_std=(0.5, 0.5, 0.5)),
      text: _tower("text", tc, vocab_size=tc["vocab_size"],
                   context_length=tc["max_position_embeddings"], causal=False, pool="last",
                   head="linear", head_bias=True, scan=scan),
  }
  params = {image: stack_if_scanned(image_params, scan), text: stack_if_scanned(text_params, scan)}
  for name in ("logit_scale", "logit_bias"):
    if sd.has(name):
      params[name] = sd(name).reshape(())
  notes = ["SigLIP attends to every position: feed fixed-length text without trailing "
           "pad ids (xmodal masks the trailing pad_id keys in bidirectional towers)"]
  report = Report("hf SiglipModel", unused=sd.unused(ignore=(r".*position_ids",)), notes=notes)
  return Converted(towers, params, report, embed_dim,
                   {"image_size": image_size or native, "loss": "sigmoid",
                    "context_length": tc["max_position_embeddings"]})


def convert_bert(state: dict, hf_config: dict, text: str = "text", pool: str = "mean",
                 scan: bool = False, embed_dim: int = 0) -> Converted:
  """BERT-family encoder (BertModel / sentence-transformers) -> an xmodal text tower.
  pool: "mean" (sentence-transformers) or "first" ([CLS]). embed_dim=0 keeps the features
  as the embedding (head "none"); otherwise a fresh linear head to embed_dim (left out of
  the params: initialise it)."""
  prefix = "bert." if "bert.embeddings.word_embeddings.weight" in state else ""
  sd = StateDict(state, prefix)
  c = dict(hf_config)
  c.setdefault("layer_norm_eps", 1e-12)
  if c.get("position_embedding_type", "absolute") != "absolute":
    raise ValueError(f"position_embedding_type {c['position_embedding_type']!r} is not supported")
  depth = c["num_hidden_layers"]
  blocks = {}
  for i in range(depth):
    p = f"encoder.layer.{i}."
    blocks[f"block_{i}"] = {
        "attn": {"qkv": sd.qkv(p + "attention.self.query", p + "attention.self.key",
                               p + "attention.self.value"),
                 "out": sd.linear(p + "attention.output.dense")},
        "ln1": sd.norm(p + "attention.output.LayerNorm"),
        "mlp": {"fc1": sd.linear(p + "intermediate.dense"), "fc2": sd.linear(p + "output.dense")},
        "ln2": sd.norm(p + "output.LayerNorm"),
    }
  encoder = {
      "token_embed": {"embedding": sd("embeddings.word_embeddings.weight")},
      "pos_embed": sd("embeddings.position_embeddings.weight")[None],
      "ln_pre": sd.norm("embeddings.LayerNorm"),
      "transformer": blocks,
  }
  type_vocab = 0
  if sd.has("embeddings.token_type_embeddings.weight"):
    encoder["type_embed"] = sd("embeddings.token_type_embeddings.weight")
    type_vocab = encoder["type_embed"].shape[0]
  tower = _tower("text", c, vocab_size=c["vocab_size"],
                 context_length=c["max_position_embeddings"], type_vocab_size=type_vocab,
                 causal=False, pool=pool, norm_first=False, pre_norm=True, final_norm=False,
                 head="linear" if embed_dim else "none", scan=scan)
  params = {text: stack_if_scanned({"encoder": encoder}, scan)}
  report = Report(f"hf {c.get('model_type', 'bert')}",
                  unused=sd.unused(ignore=(r".*position_ids",)))
  return Converted({text: tower}, params, report, embed_dim or c["hidden_size"])
