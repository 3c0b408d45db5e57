"""The notebook API: `xmodal.load`, `xmodal.get_tokenizer`, `xmodal.zero_shot_classifier`.

`load(path)` opens either
  * a run directory (`xmodal train --workdir`): its config (workdir/config.json) rebuilds the
    model and the newest (or a given) checkpoint's params are restored, without the
    optimizer state, onto the devices that exist now (one CPU is enough); or
  * converted weights (what tools/convert_weights.py writes: a folder with
    params.safetensors and towers.json, or the .safetensors file itself): the default config
    with the converted tower sections, embedding size, image size and loss; text needs the
    original tokenizer's file (`tokenizer=`), since the folder does not carry one.
`m.encode(image=..., text=[...])` preprocesses raw inputs the way evaluation does and
returns {modality: float32 [N, D] unit vectors}.
"""

import json
import os

import jax
import ml_collections
import numpy as np
from PIL import Image

from xmodal import checkpoint, config as config_lib, embed, parallel
from xmodal.data import tokenizer as tokenizer_lib, transforms
from xmodal.evaluate import zeroshot
from xmodal.models import model as model_lib

CONVERTED_META = "towers.json"          # beside params.safetensors (tools/convert_weights.py)
CONVERTED_PARAMS = "params.safetensors"


def load_config(workdir: str) -> ml_collections.ConfigDict:
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise config_lib.WorkdirError(f"{path}: not found; is {workdir!r} an xmodal workdir?")
  with open(path) as f:
    return config_lib.upgrade(ml_collections.ConfigDict(json.load(f)))


def converted_files(path: str) -> tuple[str, str] | None:
  """(params.safetensors, towers.json) if `path` is converted weights (the folder, or the
  .safetensors file with towers.json beside it), else None."""
  path = os.path.expanduser(path)
  folder = path if os.path.isdir(path) else os.path.dirname(path)
  params = path if path.endswith(".safetensors") else os.path.join(folder, CONVERTED_PARAMS)
  meta = os.path.join(folder, CONVERTED_META)
  if os.path.isfile(params) and os.path.isfile(meta):
    return params, meta
  return None


def converted_config(meta_path: str) -> ml_collections.ConfigDict:
  """The default config with a converted model's sections and settings from towers.json
  (`convert.read_saved`): its towers, model.embed_dim and, when the conversion knows them,
  data.image_size, data.context_length, loss.name and loss.max_scale."""
  from xmodal import convert, default_config  # noqa: PLC0415
  towers, settings = convert.read_saved(os.path.dirname(meta_path))
  return convert.apply_saved(default_config.get_config(), towers, settings, replace_towers=True)


def _use_tokenizer(config, tokenizer: str):
  """Points config.data at a tokenizer given by name ("bytes") or file."""
  if tokenizer == "bytes":
    config.data.tokenizer, config.data.tokenizer_path = "bytes", ""
    return
  path = os.path.expanduser(tokenizer)
  kind = tokenizer_lib.kind_of_file(path)
  if os.path.isdir(path):
    path = os.path.join(path, "tokenizer.json")
  config.data.tokenizer, config.data.tokenizer_path = kind, path


def _converted_params(params_path: str, abstract) -> dict:
  """Converted weights onto the model's params (numpy): every model param by name (blocks
  compared unscanned, as `config.init` does), size-preserving shape differences (a scalar
  stored as [1]) reshaped. A param the file lacks is an error naming it."""
  from xmodal import convert, init  # noqa: PLC0415
  source = init.read_source(params_path)
  zeros = jax.tree.map(lambda a: np.zeros(a.shape, a.dtype), abstract)
  wanted = convert.flatten(init._unscan(zeros))
  missing = sorted(set(wanted) - set(source))
  if missing:
    raise ValueError(f"{params_path}: no weights for {len(missing)} model params, e.g. "
                     f"{missing[:3]}; the file holds {len(source)} params")
  for name, value in wanted.items():
    if source[name].shape != value.shape and source[name].size == value.size:
      source[name] = source[name].reshape(value.shape)
  params, _ = init.assign(zeros, source)
  return params


class LoadedModel:
  """A model in a notebook: `config`, `params` (plain pytree), `step`, `model` (the Flax
  module), `tokenizer`; `encode`, `similarity`, `tabulate`."""

  def __init__(self, config, params, step: int, mesh, source: str = "", tokenizer=True):
    self.config, self.params, self.step, self.mesh = config, params, step, mesh
    self.source = source
    self.model = model_lib.MultiTower(config)
    self.tokenizer = tokenizer_lib.get_tokenizer(config) if tokenizer else None
    shards = mesh.shape["data"] * mesh.shape["fsdp"]
    batch = max(shards, (config.eval.batch_size // shards) * shards)
    self.embedder = embed.Embedder(self.model, mesh, batch)
    self._context = None               # `evaluate`'s embeddings and prepared inputs

  def preprocess(self, modality: str, inputs) -> np.ndarray:
    """Raw inputs -> the tower's input array. Images: uint8 arrays [N, H, W, C] (any H, W;
    C = 1, 3, or 4 with alpha), a list of such arrays, PIL images or file paths;
    transparency is composited onto data.alpha_background as in training. Text: a list of
    strings (or int token ids [N, L]). Other towers (audio, video, volume, vector, signal):
    arrays already in the tower's input format, or a list of files / bytes / arrays,
    decoded and prepared as in evaluation (e.g. audio=["a.wav", "b.flac"])."""
    kind = self.config.towers[modality].kind
    if kind == "text":
      if isinstance(inputs, np.ndarray) and inputs.dtype.kind in "iu":
        return inputs                     # already token ids [N, L]
      if self.tokenizer is None:
        raise ValueError(f"{self.source}: converted weights carry no tokenizer; load them "
                         f"with xmodal.load(path, tokenizer=FILE) (the original model's "
                         f"tokenizer file) or pass token ids")
      if isinstance(inputs, str):
        inputs = [inputs]
      return self.tokenizer.encode_batch(list(inputs))
    if kind != "vit":
      return self._prepare_records(modality, inputs)
    d = self.config.data
    background = tuple(d.get("alpha_background", transforms.WHITE))
    out = []
    for item in inputs:
      if isinstance(item, str):
        item = transforms.decode(item, d.image_size, background)
      elif not isinstance(item, Image.Image):
        item = np.asarray(item, np.uint8)
      pixels = transforms.resize_center_crop(item, d.image_size, background)
      out.append(transforms.finalize(pixels, d.image_dtype, d.normalize))
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
    # The scale as the loss uses it (the optimizer clamps the parameter, the loss does not).
    scale = float(np.exp(np.asarray(self.params["logit_scale"])).reshape(-1)[0])
    bias = float(np.asarray(self.params.get("logit_bias", 0.0)).reshape(-1)[0])
    return scale * za @ zb.T + bias

  def tabulate(self, depth: int | None = None, **kwargs) -> str:
    """Flax's `Module.tabulate` of the model on a batch of one dummy input per tower: each
    submodule's inputs, outputs and parameter counts, as a plain-text table (kwargs go to
    flax, e.g. console_kwargs={"width": 200})."""
    kwargs.setdefault("console_kwargs", {"width": 120, "no_color": True,
                                         "force_terminal": False})
    return self.model.tabulate(jax.random.key(0), model_lib.dummy_inputs(self.config),
                               depth=depth, **kwargs)

  def evaluate(self, task="retrieval", **options) -> dict:
    """Runs one evaluation task on this model -> {metric: float} (no task prefix).

    `task`: a kind name with its options as keywords (`m.evaluate("zeroshot",
    prompts="cifar10", data=dict(eval_source="tfds", tfds_name="cifar10", ...))`), or a
    task section (a dict or ConfigDict, as in config.eval.tasks). The task is checked as a
    config's would be (ConfigError naming the field)."""
    from xmodal import default_config  # noqa: PLC0415
    from xmodal.evaluate import harness, kinds  # noqa: PLC0415
    given = dict(task) if isinstance(task, (dict, ml_collections.ConfigDict)) else {"kind": task}
    given.update(options)
    config = ml_collections.ConfigDict(self.config.to_dict())
    with config.unlocked():
      if "eval" not in config:
        config.eval = default_config.get_config().eval
      config.eval.tasks = ml_collections.ConfigDict({"task": kinds.with_defaults(given)})
    kinds.check(config)
    from xmodal.evaluate import context as context_lib  # noqa: PLC0415
    if self._context is None:        # kept: later calls on the same data read nothing again
      self._context = context_lib.Context(config, self.embedder, self.params, self.step)
    elif self._context.params is not self.params:
      self._context.new_round(self.params, self.step)
    return harness.run_task(self._context, "task", config.eval.tasks.task)

  def text_modality(self) -> str:
    """The name of the model's text tower (kind "text"); an error if it has none or several."""
    names = [m for m, t in self.config.towers.items() if t.kind == "text"]
    if len(names) != 1:
      raise ValueError(f"expected one text tower, the model has {names or 'none'}; pass "
                       f"modality=")
    return names[0]

  def __repr__(self):
    n = sum(x.size for x in jax.tree.leaves(self.params))
    return (f"LoadedModel(step={self.step}, towers={list(self.config.towers)}, "
            f"params={n / 1e6:.2f}M, devices={self.mesh.size})")


def load(path: str, step: int | None = None, devices=None, tokenizer: str | None = None,
         config=None) -> LoadedModel:
  """A run directory at its newest checkpoint (or `step`), or converted weights (a folder
  or its params.safetensors), on `devices` (default: all). `tokenizer` (a file, or
  "bytes") replaces the run's tokenizer; converted weights need it to encode text.
  `config` replaces a run's saved config (same model; `xmodal eval` passes new eval
  fields)."""
  converted = None if os.path.isfile(os.path.join(path, "config.json")) else (
      converted_files(path))
  if config is not None:
    pass
  elif converted:
    config = converted_config(converted[1])
  else:
    config = load_config(path)
  if tokenizer:
    _use_tokenizer(config, tokenizer)
  devices = jax.devices() if devices is None else devices
  with config.unlocked():
    config.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, model=1))
  mesh = parallel.make_mesh(config, devices)
  model = model_lib.MultiTower(config)
  abstract = model_lib.unbox(model_lib.abstract_params(model, config))
  replicated = parallel.replicated(mesh)
  if converted:
    params = jax.device_put(_converted_params(converted[0], abstract), replicated)
    return LoadedModel(config, params, 0, mesh, converted[0], tokenizer=bool(tokenizer))
  abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=replicated),
                          abstract)
  params, step = checkpoint.restore_params(path, abstract, step)
  return LoadedModel(config, params, step, mesh, path)


def get_tokenizer(name_or_path="bytes", context_length: int | None = None,
                  lowercase: bool = False):
  """A tokenizer, called as open_clip's: `tok(["a dog", ...])` -> int32 [N, L].

  name_or_path: "bytes"; a tokenizer file (SentencePiece .model, Hugging Face
  tokenizer.json or a folder holding one, a CLIP BPE merges file such as
  bpe_simple_vocab_16e6.txt.gz); a run directory (its own tokenizer and context length);
  a config; or a `LoadedModel`. context_length: default the run's, else 77 for CLIP BPE
  (CLIP's), else data.context_length's default."""
  from xmodal import default_config  # noqa: PLC0415
  if isinstance(name_or_path, LoadedModel):
    name_or_path = name_or_path.config
  if isinstance(name_or_path, ml_collections.ConfigDict):
    config = ml_collections.ConfigDict(name_or_path.to_dict())
  elif os.path.isfile(os.path.join(os.path.expanduser(name_or_path), "config.json")):
    config = load_config(os.path.expanduser(name_or_path))
  elif converted_files(name_or_path):
    raise ValueError(f"{name_or_path!r} holds converted weights, which carry no tokenizer; "
                     f"give the original model's tokenizer file")
  else:
    config = default_config.get_config()
    _use_tokenizer(config, name_or_path)
    config.data.context_length = 77 if config.data.tokenizer == "clip" else (
        config.data.context_length)
  if context_length:
    config.data.context_length = context_length
  if lowercase:
    config.data.lowercase = True
  return tokenizer_lib.get_tokenizer(config)


def zero_shot_classifier(model: LoadedModel, classnames, templates,
                         modality: str | None = None) -> np.ndarray:
  """Class embeddings for zero-shot classification, as open_clip's
  `build_zero_shot_classifier`: for each class, the mean of its prompts' text embeddings
  (`templates`: strings with "{}" or functions of the class name), renormalised.
  Returns float32 [D, C], so `image_embeddings @ W` gives [N, C] class scores."""
  if isinstance(templates, str):
    templates = [templates]
  modality = modality or model.text_modality()

  def embed_text(prompts):
    return model.encode(**{modality: prompts})[modality]

  return np.ascontiguousarray(
      zeroshot.class_embeddings(embed_text, list(classnames), list(templates)).T)
