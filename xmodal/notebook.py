"""Opening a trained run in a notebook: `m = xmodal.load("runs/x")`.

The run's config (workdir/config.json) rebuilds the model; the newest (or a given)
checkpoint's params are restored onto the devices that exist now (one CPU is enough),
without the optimizer state. `m.encode(image=..., text=[...])` preprocesses raw inputs the
way evaluation does and returns {modality: float32 [N, D] unit vectors}.
"""

import json
import os

import jax
import ml_collections
import numpy as np
from PIL import Image

from xmodal import checkpoint, embed, parallel
from xmodal.data import tokenizer as tokenizer_lib, transforms
from xmodal.models import model as model_lib


def load_config(workdir: str) -> ml_collections.ConfigDict:
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path}: not found; is {workdir!r} an xmodal workdir?")
  with open(path) as f:
    return ml_collections.ConfigDict(json.load(f))


class LoadedModel:
  """A trained model: `config`, `params` (plain pytree), `step`, `encode`, `similarity`."""

  def __init__(self, config, params, step: int, mesh):
    self.config, self.params, self.step, self.mesh = config, params, step, mesh
    self.model = model_lib.MultiTower(config)
    self.tokenizer = tokenizer_lib.get_tokenizer(config)
    shards = mesh.shape["data"] * mesh.shape["fsdp"]
    batch = max(shards, (config.eval.batch_size // shards) * shards)
    self.embedder = embed.Embedder(self.model, mesh, batch)

  def preprocess(self, modality: str, inputs) -> np.ndarray:
    """Raw inputs -> the tower's input array. Images: uint8 arrays [N, H, W, 3] (any H, W),
    a list of such arrays, PIL images or file paths. Text: a list of strings (or int token
    ids [N, L]). Other towers (audio, video, volume, vector, signal): arrays already in
    the tower's input format, or a list of files / bytes / arrays, decoded and prepared as
    in evaluation (e.g. audio=["a.wav", "b.flac"])."""
    kind = self.config.towers[modality].kind
    if kind == "text":
      if isinstance(inputs, np.ndarray) and inputs.dtype.kind in "iu":
        return inputs                     # already token ids [N, L]
      if isinstance(inputs, str):
        inputs = [inputs]
      return self.tokenizer.encode_batch(list(inputs))
    if kind != "vit":
      return self._prepare_records(modality, inputs)
    size = self.config.data.image_size
    out = []
    for item in inputs:
      img = transforms.decode(item, size) if isinstance(item, str) else (
          item if isinstance(item, Image.Image) else Image.fromarray(np.asarray(item, np.uint8)))
      out.append(transforms.finalize(transforms.resize_center_crop(img.convert("RGB"), size),
                                     self.config.data.image_dtype, self.config.data.normalize))
    return np.stack(out)

  def _prepare_records(self, modality: str, inputs) -> np.ndarray:
    """Other towers: an array already in the tower's input format [N, ...], or a list of
    record values (file paths, bytes, arrays) decoded and prepared as evaluation does."""
    from xmodal import towers   # noqa: PLC0415
    from xmodal.data import decoders   # noqa: PLC0415
    cfg = towers.with_defaults(self.config.towers[modality])
    module = towers.get(cfg.kind)
    shape, _ = module.input_spec(cfg, self.config)
    if (isinstance(inputs, np.ndarray) and inputs.shape[1:] == tuple(shape)) or not hasattr(
        module, "preparer"):
      return np.asarray(inputs)
    prepare = module.preparer(cfg, self.config)
    decode = getattr(module, "DECODE", False)
    return np.stack([prepare(decoders.decode(x, cfg.get("decoder", "auto")) if decode else x,
                             False, np.random.default_rng(0)) for x in inputs])

  def encode(self, **inputs) -> dict:
    """encode(image=imgs, text=["a dog"]) -> {modality: float32 [N, D] unit vectors}."""
    unknown = set(inputs) - set(self.config.towers)
    if unknown:
      raise ValueError(f"no tower for {sorted(unknown)}; towers: {list(self.config.towers)}")
    return {m: self.embedder(self.params, m, self.preprocess(m, x)) for m, x in inputs.items()}

  def similarity(self, **inputs) -> np.ndarray:
    """similarity(image=imgs, text=texts) -> [N_image, N_text] scaled logits (scale * cosine,
    plus the bias for sigmoid models), in the order the keywords are given."""
    if len(inputs) != 2:
      raise ValueError("similarity takes exactly two modalities, e.g. image=..., text=...")
    (a, za), (b, zb) = self.encode(**inputs).items()
    scale = float(np.exp(np.minimum(np.asarray(self.params["logit_scale"]),
                                    np.log(self.config.loss.max_scale))))
    bias = float(np.asarray(self.params.get("logit_bias", 0.0)))
    return scale * za @ zb.T + bias

  def __repr__(self):
    n = sum(x.size for x in jax.tree.leaves(self.params))
    return (f"LoadedModel(step={self.step}, towers={list(self.config.towers)}, "
            f"params={n / 1e6:.2f}M, devices={self.mesh.size})")


def load(workdir: str, step: int | None = None, devices=None) -> LoadedModel:
  """The run in `workdir` at its newest checkpoint (or `step`), on `devices` (default: all)."""
  config = load_config(workdir)
  devices = jax.devices() if devices is None else devices
  with config.unlocked():
    config.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, model=1))
  mesh = parallel.make_mesh(config, devices)
  model = model_lib.MultiTower(config)
  abstract = model_lib.unbox(model_lib.abstract_params(model, config))
  replicated = parallel.replicated(mesh)
  abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=replicated),
                          abstract)
  params, step = checkpoint.restore_params(workdir, abstract, step)
  return LoadedModel(config, params, step, mesh)
