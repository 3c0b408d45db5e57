"""open_clip state dicts (OpenAI CLIP layout: `visual.*`, `transformer.*`, ...) -> xmodal.

open_clip keeps attention as torch nn.MultiheadAttention (packed in_proj), projections as
plain matrices used `x @ proj`, and pools text at the argmax token (EOT). Shapes are read
from the state dict; head counts from `model_cfg` (open_clip_config.json) or width // 64.
"""

import ml_collections
import numpy as np

from xmodal.convert import Converted, Report, StateDict, stack_if_scanned
from xmodal.models import vit as vit_lib


def _blocks(sd: StateDict, root: str, depth: int) -> dict:
  out = {}
  for i in range(depth):
    p = f"{root}.resblocks.{i}."
    out[f"block_{i}"] = {
        "ln1": sd.norm(p + "ln_1"),
        "attn": {"qkv": sd.in_proj(p + "attn"), "out": sd.linear(p + "attn.out_proj")},
        "ln2": sd.norm(p + "ln_2"),
        "mlp": {"fc1": sd.linear(p + "mlp.c_fc"), "fc2": sd.linear(p + "mlp.c_proj")},
    }
  return out


def _proj(sd, name):
  if sd.has(name + ".weight"):          # some open_clip text towers use nn.Linear
    return sd.linear(name, bias=sd.has(name + ".bias"))
  return {"kernel": sd(name)}


def convert(state: dict, model_cfg: dict | None = None, image: str = "image",
            text: str = "text", image_size: int = 0, quick_gelu: bool | None = None,
            scan: bool = False) -> Converted:
  """quick_gelu: OpenAI-pretrained weights need it (model names ending -quickgelu or the
  `openai` tag); default from model_cfg["quick_gelu"], else True."""
  model_cfg = model_cfg or {}
  vcfg, tcfg = model_cfg.get("vision_cfg", {}), model_cfg.get("text_cfg", {})
  if quick_gelu is None:
    quick_gelu = model_cfg.get("quick_gelu", True)
  act = "quick_gelu" if quick_gelu else "gelu"
  sd = StateDict(state)
  conv_w = state["visual.conv1.weight"]
  vwidth, patch = conv_w.shape[0], conv_w.shape[-1]
  vdepth = sd.count("visual.transformer.resblocks.{}.")
  pos = sd("visual.positional_embedding")
  native = int(round((pos.shape[0] - 1) ** 0.5)) * patch
  if image_size and image_size != native:
    pos = vit_lib.resize_pos_embed(pos[None], (image_size // patch,) * 2, num_prefix=1)[0]
  image_params = {"encoder": {
      "patch_embed": sd.conv("visual.conv1", bias=False),
      "cls": sd("visual.class_embedding").reshape(1, 1, -1),
      "pos_embed": pos[None],
      "ln_pre": sd.norm("visual.ln_pre"),
      "transformer": {**_blocks(sd, "visual.transformer", vdepth), "ln_final": sd.norm("visual.ln_post")},
  }, "head": {"kernel": sd("visual.proj")}}
  tok = sd("token_embedding.weight")
  twidth = tok.shape[1]
  tdepth = sd.count("transformer.resblocks.{}.")
  text_params = {"encoder": {
      "token_embed": {"embedding": tok},
      "pos_embed": sd("positional_embedding")[None],
      "transformer": {**_blocks(sd, "transformer", tdepth), "ln_final": sd.norm("ln_final")},
  }, "head": _proj(sd, "text_projection")}
  embed_dim = image_params["head"]["kernel"].shape[1]
  vmlp = image_params["encoder"]["transformer"]["block_0"]["mlp"]["fc1"]["kernel"].shape[1]
  tmlp = text_params["encoder"]["transformer"]["block_0"]["mlp"]["fc1"]["kernel"].shape[1]
  common = dict(act=act, layer_norm_eps=1e-5, scan=scan)
  towers = {
      image: ml_collections.ConfigDict(dict(
          kind="vit", width=vwidth, depth=vdepth, patch_size=patch, mlp_dim=vmlp,
          num_heads=vcfg.get("heads", vwidth // vcfg.get("head_width", 64)),
          pool="cls", pre_norm=True, **common)),
      text: ml_collections.ConfigDict(dict(
          kind="text", width=twidth, depth=tdepth, mlp_dim=tmlp,
          num_heads=tcfg.get("heads", max(twidth // 64, 1)), vocab_size=tok.shape[0],
          context_length=text_params["encoder"]["pos_embed"].shape[1], causal=True,
          pool="argmax", head_bias="bias" in text_params["head"], **common)),
  }
  params = {image: stack_if_scanned(image_params, scan), text: stack_if_scanned(text_params, scan)}
  if sd.has("logit_scale"):
    params["logit_scale"] = np.asarray(sd("logit_scale")).reshape(())
  report = Report("open_clip", unused=sd.unused(ignore=(r"attn_mask",)))
  return Converted(towers, params, report, embed_dim,
                   {"image_size": image_size or native, "loss": "softmax",
                    "context_length": towers[text].context_length})
