"""Pretrained weights in: Hugging Face `CLIPModel`, `SiglipModel` and BERT-family
safetensors, and open_clip state dicts, mapped onto xmodal parameters.

Each converter reads a flat {name: numpy array} state dict (safetensors' numpy API; torch is
never needed) and a model config, and returns a `Converted`: the tower config sections that
reproduce the architecture, the xmodal params `{modality: {encoder, head}, logit_scale, ...}`
and a `Report` of the source keys it did not use. `Converted.apply_to(config)` writes the
tower sections into an experiment config; `check_params(converted.params, model params)`
lists missing / unexpected / mis-shaped keys against a real model.

    from xmodal import convert
    conv = convert.load("path/to/hf_model_dir")          # kind from config.json
    config = conv.apply_to(default_config.get_config())
    print(conv.report)
"""

import dataclasses
import difflib
import glob
import json
import os
import re

import ml_collections
import numpy as np

from xmodal.models import layers


@dataclasses.dataclass
class Report:
  """What a conversion did not map. `unused`: source keys no xmodal param took (e.g. BERT's
  pooler); `missing`/`unexpected`/`mismatched`: set by `check_params` against a model."""
  source: str
  unused: list = dataclasses.field(default_factory=list)
  missing: list = dataclasses.field(default_factory=list)
  unexpected: list = dataclasses.field(default_factory=list)
  mismatched: list = dataclasses.field(default_factory=list)
  notes: list = dataclasses.field(default_factory=list)   # caveats of the mapping

  @property
  def ok(self) -> bool:
    return not (self.missing or self.unexpected or self.mismatched)

  def __str__(self):
    lines = [f"conversion from {self.source}:"]
    for name in ("unused", "missing", "unexpected", "mismatched"):
      items = getattr(self, name)
      lines.append(f"  {name} ({len(items)}): " + (", ".join(map(str, items)) or "-"))
    lines += [f"  note: {n}" for n in self.notes]
    return "\n".join(lines)


DEFAULT_MAX_SCALE = 100.0     # default_config's loss.max_scale


def scale_bound(logit_scale, current: float = DEFAULT_MAX_SCALE) -> float:
  """The loss.max_scale that admits a checkpoint's logit_scale (a log): `current` when the
  scale is within it, else exp(logit_scale), whose log rounds back to the same float32,
  so the optimizer's clamp (optim.clamp_scale) leaves the loaded value as it is."""
  s = np.float32(np.asarray(logit_scale, np.float32).reshape(()))
  if s <= np.float32(np.log(np.float64(current))):
    return current
  return float(np.exp(np.float64(s)))


@dataclasses.dataclass
class Converted:
  towers: dict            # {modality: ConfigDict tower section}
  params: dict            # nested numpy params
  report: Report
  embed_dim: int
  extra: dict = dataclasses.field(default_factory=dict)   # image_size, loss, context_length

  def settings(self) -> dict:
    """{dotted config key: value} that the conversion fixes beside the tower sections:
    model.embed_dim; when known data.image_size, data.context_length (the fixed text length
    CLIP and SigLIP were trained with; SigLIP pools at its last position), loss.name; and
    loss.max_scale when the checkpoint's scale is above the default bound (SigLIP)."""
    out = {"model.embed_dim": self.embed_dim}
    for key, field in _EXTRA_FIELDS.items():
      if key in self.extra:
        out[field] = self.extra[key]
    if "logit_scale" in self.params:
      bound = scale_bound(self.params["logit_scale"])
      if bound > DEFAULT_MAX_SCALE:
        out["loss.max_scale"] = bound
    return out

  def apply_to(self, config):
    """Sets config.towers[modality] (over the kind's defaults; other towers are dropped) and
    `settings()`. Returns config."""
    return apply_saved(config, {m: dict(t) for m, t in self.towers.items()}, self.settings(),
                       replace_towers=True)


def apply_saved(config, towers: dict, settings: dict, replace_towers: bool = False):
  """Writes converted tower sections (over their kind's defaults) and dotted `settings` into
  config; replace_towers=False keeps the config's other towers. Returns config."""
  from xmodal import default_config  # noqa: PLC0415
  with config.unlocked():
    if replace_towers:
      config.towers = ml_collections.ConfigDict()
    for modality, section in towers.items():
      tower = default_config.tower_defaults(section["kind"])
      tower.update({k: tuple(v) if isinstance(v, list) else v for k, v in section.items()})
      config.towers[modality] = tower
    for key, value in settings.items():
      *path, last = key.split(".")
      node = config
      for part in path:
        node = node[part]
      node[last] = value
  return config


# towers.json (tools/convert_weights.py): "towers" (the sections), "model.embed_dim",
# "extra.<key>" for Converted.extra, "loss.max_scale" when above the default, and the report.
_EXTRA_FIELDS = {"image_size": "data.image_size", "context_length": "data.context_length",
                 "loss": "loss.name"}


def towers_json(conv: Converted, kind: str) -> dict:
  """What tools/convert_weights.py writes to towers.json for a conversion."""
  settings = conv.settings()
  return {"kind": kind, "towers": {m: t.to_dict() for m, t in conv.towers.items()},
          "model.embed_dim": conv.embed_dim,
          **{f"extra.{k}": v for k, v in conv.extra.items()},
          **{k: settings[k] for k in ("loss.max_scale",) if k in settings},
          "unused_source_keys": conv.report.unused, "notes": conv.report.notes}


def read_saved(folder: str) -> tuple[dict, dict]:
  """(tower sections, settings as in `Converted.settings`) from the towers.json that
  tools/convert_weights.py wrote in `folder`."""
  meta = read_json(os.path.join(folder, "towers.json"))
  settings = {"model.embed_dim": meta["model.embed_dim"]}
  for key, field in _EXTRA_FIELDS.items():
    if f"extra.{key}" in meta:
      settings[field] = meta[f"extra.{key}"]
  if "loss.max_scale" in meta:
    settings["loss.max_scale"] = meta["loss.max_scale"]
  return meta["towers"], settings


class StateDict:
  """A source state dict that records which keys were read."""

  def __init__(self, tensors: dict, prefix: str = ""):
    self.tensors = {k: np.asarray(v) for k, v in tensors.items()}
    self.prefix = prefix
    self.used = set()

  def has(self, key):
    return self.prefix + key in self.tensors

  def __call__(self, key) -> np.ndarray:
    full = self.prefix + key
    if full not in self.tensors:
      close = difflib.get_close_matches(full, list(self.tensors), n=3, cutoff=0.6)
      raise KeyError(f"source checkpoint has no {full!r} (needed by the converter); similar "
                     f"source keys: {close or 'none'}; {len(self.tensors)} keys in the source")
    self.used.add(full)
    return self.tensors[full].astype(np.float32)

  def unused(self, ignore=()):
    return sorted(k for k in self.tensors
                  if k not in self.used and not any(re.fullmatch(p, k) for p in ignore))

  def count(self, pattern):
    """How many distinct integers fill the single `{}` in pattern (layer counting)."""
    rx = re.compile(re.escape(self.prefix + pattern).replace(r"\{\}", r"(\d+)"))
    return len({m.group(1) for k in self.tensors if (m := rx.match(k))})

  # ---- torch layouts -> flax layouts
  def linear(self, name, bias=True):
    out = {"kernel": self(name + ".weight").T}
    if bias:
      out["bias"] = self(name + ".bias")
    return out

  def norm(self, name):
    if self.has(name + ".weight"):
      return {"scale": self(name + ".weight"), "bias": self(name + ".bias")}
    return {"scale": self(name + ".gamma"), "bias": self(name + ".beta")}   # old BERT names

  def qkv(self, q, k, v):
    """Separate q/k/v torch Linears -> xmodal's fused [D, 3D] kernel [q | k | v]."""
    return {"kernel": np.concatenate([self(f"{n}.weight").T for n in (q, k, v)], axis=1),
            "bias": np.concatenate([self(f"{n}.bias") for n in (q, k, v)])}

  def in_proj(self, name):
    """torch nn.MultiheadAttention packed in_proj [3D, D] -> fused [D, 3D] kernel."""
    return {"kernel": self(name + ".in_proj_weight").T, "bias": self(name + ".in_proj_bias")}

  def conv(self, name, bias=True):
    w = self(name + ".weight")                       # [out, in, kh, kw]
    out = {"kernel": w.transpose(2, 3, 1, 0)}        # [kh, kw, in, out]
    out["bias"] = self(name + ".bias") if bias else np.zeros(w.shape[0], np.float32)
    return out


def load_safetensors(path: str) -> dict:
  """{name: np.ndarray} from a .safetensors file, or every *.safetensors in a directory
  (sharded checkpoints)."""
  from safetensors.numpy import load_file  # noqa: PLC0415
  files = sorted(glob.glob(os.path.join(path, "*.safetensors"))) if os.path.isdir(path) else [path]
  if not files:
    raise FileNotFoundError(f"no .safetensors file in {path}")
  out = {}
  for f in files:
    out.update(load_file(f))
  return out


def load_state(path: str) -> dict:
  """A state dict from safetensors (numpy; preferred) or, if torch is installed, a torch
  .bin/.pt file (open_clip's usual format)."""
  if path.endswith((".bin", ".pt", ".pth")):
    import torch  # noqa: PLC0415 (optional, only for torch pickles)
    sd = torch.load(path, map_location="cpu", weights_only=True)
    sd = sd.get("state_dict", sd)
    return {k.removeprefix("module."): v.float().numpy() for k, v in sd.items()}
  return load_safetensors(path)


def flatten(params: dict, prefix: str = "") -> dict:
  """Nested params -> {"a/b/c": array}."""
  out = {}
  for k, v in params.items():
    if isinstance(v, dict) or hasattr(v, "items"):
      out.update(flatten(v, f"{prefix}{k}/"))
    else:
      out[f"{prefix}{k}"] = v
  return out


def unflatten(flat: dict) -> dict:
  out = {}
  for name, v in flat.items():
    node = out
    *path, last = name.split("/")
    for p in path:
      node = node.setdefault(p, {})
    node[last] = v
  return out


def check_params(converted: dict, target, report: Report | None = None) -> Report:
  """Compares converted params with a model's params (arrays or ShapeDtypeStructs, boxed or
  not) by flattened name and shape; fills report.missing / unexpected / mismatched."""
  from xmodal.models import model as model_lib  # noqa: PLC0415
  report = report or Report("check")
  src = flatten(converted)
  dst = flatten(model_lib.unbox(target))
  report.missing = sorted(set(dst) - set(src))
  report.unexpected = sorted(set(src) - set(dst))
  report.mismatched = sorted(
      (k, tuple(src[k].shape), tuple(dst[k].shape)) for k in set(src) & set(dst)
      if tuple(src[k].shape) != tuple(dst[k].shape))
  return report


def stack_if_scanned(tower_params: dict, scan: bool) -> dict:
  """Converters emit one subtree per block; scanned towers want them stacked."""
  return layers.map_transformers(tower_params, layers.stack_blocks) if scan else tower_params


def read_json(path):
  with open(path) as f:
    return json.load(f)


def detect(path: str) -> str:
  """"hf-clip", "hf-siglip", "hf-bert" or "open-clip" from the files in a model directory."""
  if os.path.isdir(path) and os.path.exists(os.path.join(path, "config.json")):
    model_type = read_json(os.path.join(path, "config.json")).get("model_type", "")
    if model_type in ("clip", "siglip"):
      return f"hf-{model_type}"
    if model_type == "bert":
      return "hf-bert"
  if os.path.isdir(path) and os.path.exists(os.path.join(path, "open_clip_config.json")):
    return "open-clip"
  raise ValueError(f"cannot tell what {path} holds; pass kind= explicitly")


def load(path: str, kind: str = "auto", **kwargs) -> Converted:
  """Converts the model in directory `path` (config.json + *.safetensors, or open_clip's
  open_clip_config.json + weights). kwargs go to the converter (image_size=, scan=, ...)."""
  from xmodal.convert import hf, open_clip  # noqa: PLC0415
  kind = detect(path) if kind == "auto" else kind
  if kind == "open-clip":
    cfg_path = os.path.join(path, "open_clip_config.json") if os.path.isdir(path) else None
    files = [p for p in glob.glob(os.path.join(path, "*")) if p.endswith(
        (".safetensors", ".bin", ".pt", ".pth"))] if os.path.isdir(path) else [path]
    state = load_state(sorted(files, key=lambda p: not p.endswith(".safetensors"))[0])
    model_cfg = read_json(cfg_path) if cfg_path and os.path.exists(cfg_path) else {}
    return open_clip.convert(state, model_cfg.get("model_cfg", model_cfg), **kwargs)
  hf_config = read_json(os.path.join(path, "config.json"))
  state = load_safetensors(path)
  fn = {"hf-clip": hf.convert_clip, "hf-siglip": hf.convert_siglip, "hf-bert": hf.convert_bert}
  if kind not in fn:
    raise ValueError(f"unknown converter {kind!r}; known: {sorted(fn) + ['open-clip']}")
  return fn[kind](state, hf_config, **kwargs)
