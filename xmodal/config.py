"""Config checking: every config is validated before anything compiles.

`validate(config, num_devices)` checks the config against the fields declared in
`xmodal/default_config.py` (unknown keys, types, choices, ranges: `xmodal/fields.py`), then
the rules that relate fields to each other, and raises `ConfigError` with the dotted name of
the first bad field: a batch size that the devices cannot split, a path that matches no
files, a text context the tower cannot embed, ...
"""

import os
import re

import ml_collections

from xmodal import default_config, fields
from xmodal.fields import ConfigError  # noqa: F401 (the project's config error type)

# Sources of tower-ready records, no captions (data/pipeline.py READY_SOURCES).
_READY_SOURCES = ("synthetic", "features")
# Keys the data pipeline puts in every batch beside the modalities (xmodal/data/pipeline.py).
RESERVED_BATCH_KEYS = ("label", "skipped", "epoch", "source", "group", "caption")


def _get(config, dotted):
  node = config
  for part in dotted.split("."):
    node = node[part]
  return node


def mesh_shape(config, num_devices: int) -> dict:
  """Resolves -1 in config.mesh and checks the product is the device count."""
  shape = {axis: config.mesh[axis] for axis in ("data", "fsdp", "model")}
  free = [a for a, n in shape.items() if n == -1]
  if len(free) > 1:
    raise ConfigError(f"config.mesh: at most one axis may be -1, got {dict(shape)}")
  for axis, n in shape.items():
    if n == 0 or n < -1:
      raise ConfigError(f"config.mesh.{axis}: must be a positive size or -1, got {n}")
  fixed = 1
  for a, n in shape.items():
    if n != -1:
      fixed *= n
  if free:
    if num_devices % fixed:
      raise ConfigError(
          f"config.mesh: fixed axes {dict(shape)} (product {fixed}) do not divide the "
          f"{num_devices} devices")
    shape[free[0]] = num_devices // fixed
  elif fixed != num_devices:
    raise ConfigError(
        f"config.mesh: product of {dict(shape)} is {fixed}, but there are {num_devices} devices")
  return shape


def _check_tower(config, modality: str, tower) -> None:
  """One tower section: its name, its kind's declared fields, and its sizes."""
  if modality in RESERVED_BATCH_KEYS:
    raise ConfigError(f"config.towers.{modality}: {modality!r} is a batch key the pipeline "
                      f"adds ({', '.join(RESERVED_BATCH_KEYS)}); name the modality otherwise")
  if not isinstance(tower, ml_collections.ConfigDict):
    raise ConfigError(f"config.towers.{modality}: expected a tower section, got {tower!r}")
  kind = tower.get("kind")
  if kind not in default_config.tower_kinds():
    raise ConfigError(
        f"config.towers.{modality}.kind: unknown tower kind {kind!r}"
        f"{fields.closest(str(kind), default_config.tower_kinds())} (known: "
        f"{', '.join(default_config.tower_kinds())})")
  fields.check(tower, default_config.tower_fields(kind), f"towers.{modality}.")
  size = tower
  if kind == "vit" and tower.variant:
    from xmodal.models import vit as vit_lib   # noqa: PLC0415 (keeps config import light)
    try:
      size = ml_collections.ConfigDict({**tower.to_dict(), **vit_lib.parse_variant(tower.variant)})
    except ValueError as e:
      raise ConfigError(f"config.towers.{modality}.variant: {e}") from None
  if "num_heads" in size and size.width % size.num_heads:
    raise ConfigError(
        f"config.towers.{modality}.width: {size.width} is not divisible by num_heads "
        f"{size.num_heads}")
  width = size.features if (kind == "vector" and tower.encoder == "identity") else size.width
  if tower.get("head") == "none" and width != config.model.embed_dim:
    raise ConfigError(
        f"config.towers.{modality}.head: 'none' needs width {width} == "
        f"model.embed_dim {config.model.embed_dim}")


def validate(config, num_devices: int) -> None:
  """Raises ConfigError naming the first bad field; returns None when the config is usable."""
  towers = config.get("towers")
  if not isinstance(towers, ml_collections.ConfigDict) or len(towers) < 2:
    raise ConfigError("config.towers: needs at least two towers (one per modality)")
  fields.check(config, default_config.SCHEMA, skip=("towers",))
  for modality, tower in towers.items():
    _check_tower(config, modality, tower)
  _check_inputs(towers)
  # Data sources the step understands: one image tower and one text tower per example
  # (plus towers that read their inputs: teachers, references).
  kinds = sorted(t.kind for t in towers.values() if not t.get("input"))
  if config.data.source not in _READY_SOURCES and kinds != ["text", "vit"]:
    raise ConfigError(
        f"config.towers: data.source={config.data.source!r} gives image/caption pairs, so it "
        f"needs one 'vit' and one 'text' tower, got kinds {kinds}")
  if config.data.captions == "k" and config.data.source in _READY_SOURCES:
    raise ConfigError(f"config.data.captions: 'k' needs an image/caption source, got "
                      f"data.source={config.data.source!r}")

  if config.loss.positives == "group" and not _records_unroll(config):
    raise ConfigError(
        f"config.loss.positives: 'group' needs data.captions='all' on an image/caption source "
        f"(got captions={config.data.captions!r}, source={config.data.source!r}): only then do "
        f"several examples come from one record; otherwise every example is its own group")
  for pair in config.loss.pairs:
    parts = pair.split(":")
    if len(parts) != 2 or parts[0] == parts[1] or any(p not in towers for p in parts):
      raise ConfigError(
          f"config.loss.pairs: {pair!r} must be 'a:b' with two different tower names from "
          f"{sorted(towers.keys())}")
  from xmodal.losses import terms   # noqa: PLC0415 (the objectives import jax)
  terms.check(config)
  if config.optim.warmup_steps >= config.train.total_steps:
    raise ConfigError(
        f"config.optim.warmup_steps: {config.optim.warmup_steps} must be below "
        f"train.total_steps {config.train.total_steps}")
  for name in ("data.crop_scale", "data.crop_ratio"):
    low_high = _get(config, name)
    if len(low_high) != 2 or not low_high[0] <= low_high[1]:
      raise ConfigError(f"config.{name}: expected (low, high) with low <= high, got {low_high}")
  vit = [t for t in towers.values() if t.kind == "vit"]
  for t in vit:
    patch = t.patch_size
    if t.variant and "/" in t.variant:
      patch = int(t.variant.split("/")[1])
    if config.data.image_size % patch:
      raise ConfigError(
          f"config.data.image_size: {config.data.image_size} is not divisible by the ViT "
          f"patch_size {patch}")

  for rule in config.sharding.rules:
    axes = rule[1] if len(rule) == 2 else None
    axes = (axes,) if isinstance(axes, str) else tuple(axes or ())
    if len(rule) != 2 or not isinstance(rule[0], str) or any(
        a not in ("data", "fsdp", "model") for a in axes):
      raise ConfigError(
          f"config.sharding.rules: {tuple(rule)!r} must be (logical name, mesh axis, tuple "
          f"of mesh axes or None) with mesh axes from ('data', 'fsdp', 'model')")

  if any(t.get("scan") for t in towers.values()) and "layers" not in [
      r[0] for r in config.sharding.rules]:
    raise ConfigError("config.sharding.rules: scanned towers need a rule for the 'layers' "
                      "axis, e.g. ('layers', None)")

  shape = mesh_shape(config, num_devices)
  batch_shards = shape["data"] * shape["fsdp"]
  if config.batch_size % batch_shards:
    raise ConfigError(
        f"config.batch_size: {config.batch_size} is not divisible by the {batch_shards} "
        f"batch shards (mesh data={shape['data']} x fsdp={shape['fsdp']}, {num_devices} devices)")
  per_shard = config.batch_size // batch_shards
  if per_shard % config.train.microbatches:
    raise ConfigError(
        f"config.train.microbatches: {config.train.microbatches} does not divide the batch per "
        f"shard {per_shard} (batch_size {config.batch_size} over {batch_shards} batch shards)")
  if config.eval.batch_size % batch_shards:
    raise ConfigError(
        f"config.eval.batch_size: {config.eval.batch_size} is not divisible by the "
        f"{batch_shards} batch shards")

  _validate_data(config)
  source = config.init["from"]
  if source and not os.path.exists(os.path.expanduser(source)):
    raise ConfigError(f"config.init.from: no such file or directory {source!r}")
  for pair in config.init.map:
    if len(pair) != 2 or not all(isinstance(p, str) for p in pair):
      raise ConfigError(f"config.init.map: {pair!r} must be (dst_regex, src_template)")
  for field in ("train.frozen", "train.unfrozen"):
    for pattern in _get(config, field):
      try:
        re.compile(pattern)
      except (re.error, TypeError) as e:
        raise ConfigError(f"config.{field}: {pattern!r} is not a regex ({e})") from None
  if config.eval.classnames and not os.path.exists(config.eval.classnames):
    raise ConfigError(f"config.eval.classnames: no such file {config.eval.classnames!r}")
  for template in config.eval.templates:
    if "{}" not in template:
      raise ConfigError(f"config.eval.templates: {template!r} has no '{{}}' for the class name")


def _check_files(name: str, pattern: str, why: str):
  from xmodal.data import sources
  if not pattern:
    raise ConfigError(f"config.{name}: required {why}")
  try:
    sources.expand_pattern(pattern)
  except sources.SourceError as e:
    raise ConfigError(f"config.{name}: {e}") from None


def _check_kind(config, kind: str, split: str, field: str, pattern: str):
  """One source kind of one split; `field` names the config field holding `pattern`."""
  d = config.data
  why = f"when the {split} data is {kind!r}"
  if kind in ("manifest", "webdataset", "arrayrecord", "features"):
    _check_files(field, pattern, why)
  elif kind == "tfds":
    if not d.tfds_name:
      raise ConfigError(f"config.data.tfds_name: required {why}")
    if not pattern:
      raise ConfigError(f"config.{field}: required {why}")
    from xmodal.data import sources
    try:
      sources.parse_keys(d.tfds_keys)
    except ValueError as e:
      raise ConfigError(f"config.data.tfds_keys: {e}") from None
    if d.tfds_data_dir and not os.path.isdir(os.path.expanduser(d.tfds_data_dir)):
      raise ConfigError(f"config.data.tfds_data_dir: no such folder {d.tfds_data_dir!r}")


def _validate_data(config):
  d = config.data
  from xmodal.data import pipeline, tokenizer
  # Train split.
  if d.source == "mixture":
    try:
      parts = pipeline.parse_mixture(d.mixture)
    except ValueError as e:
      raise ConfigError(f"config.data.mixture: {e}") from None
    for kind, pattern, _ in parts:
      _check_kind(config, kind, "train", "data.mixture", pattern)
    if not d.eval_source:
      raise ConfigError("config.data.eval_source: required when data.source='mixture' (the "
                        "kind of the eval split, read from data.eval_files / tfds_eval_split)")
  elif d.source == "manifest":
    field = "data.train_files" if d.train_files else "data.train_manifest"
    _check_kind(config, "manifest", "train", field, d.train_files or d.train_manifest)
  elif d.source == "tfds":
    _check_kind(config, "tfds", "train", "data.tfds_train_split", d.tfds_train_split)
  elif d.source not in ("shapes", "synthetic"):
    _check_kind(config, d.source, "train", "data.train_files", d.train_files)
  # Eval split.
  kind = d.eval_source or d.source
  if kind == "manifest":
    field = "data.eval_files" if d.eval_files else "data.eval_manifest"
    _check_kind(config, "manifest", "eval", field, d.eval_files or d.eval_manifest)
  elif kind == "tfds":
    _check_kind(config, "tfds", "eval", "data.tfds_eval_split", d.tfds_eval_split)
  elif kind not in ("shapes", "synthetic"):
    _check_kind(config, kind, "eval", "data.eval_files", d.eval_files)
  # Images and text.
  if d.image_dtype == "uint8" and d.normalize != "none":
    raise ConfigError(f"config.data.normalize: {d.normalize!r} needs data.image_dtype="
                      f"'float32' (uint8 images are normalised by the image tower)")
  if d.tokenizer != "bytes":
    if not d.tokenizer_path:
      raise ConfigError(f"config.data.tokenizer_path: required for data.tokenizer="
                        f"{d.tokenizer!r}")
    if not os.path.isfile(os.path.expanduser(d.tokenizer_path)):
      raise ConfigError(f"config.data.tokenizer_path: no such file {d.tokenizer_path!r}")
  try:
    tok = tokenizer.get_tokenizer(config)
  except Exception as e:
    raise ConfigError(f"config.data.tokenizer: cannot load {d.tokenizer!r} from "
                      f"{d.tokenizer_path!r}: {e}") from None
  # Text towers must embed every id the tokenizer emits and pool where its EOS is.
  for name, tower in config.towers.items():
    if tower.get("kind") != "text":
      continue
    vocab = tower.get("vocab_size", 0)
    if vocab and vocab < tok.vocab_size:
      raise ConfigError(
          f"config.towers.{name}.vocab_size: {vocab} is below the {tok.vocab_size} ids that "
          f"data.tokenizer={d.tokenizer!r} emits (ids past the embedding table embed as NaN)")
    if tower.get("pool") == "argmax" and tok.eos_id != tok.vocab_size - 1:
      raise ConfigError(
          f"config.towers.{name}.pool: 'argmax' pools at the highest token id, but EOS is not "
          f"the highest id of data.tokenizer={d.tokenizer!r} (EOS {tok.eos_id}, ids up to "
          f"{tok.vocab_size - 1}); use 'eot' (the last real token, EOS for every tokenizer)")


def _check_inputs(towers) -> None:
  """towers.<name>.input names another tower of the same kind that reads its own input."""
  for name, tower in towers.items():
    source = tower.get("input")
    if not source:
      continue
    if source not in towers or towers[source].get("input") or source == name:
      raise ConfigError(
          f"config.towers.{name}.input: {source!r} must name another tower that reads its "
          f"own input, one of {sorted(n for n, t in towers.items() if not t.get('input'))}")
    if towers[source].kind != tower.kind:
      raise ConfigError(f"config.towers.{name}.input: tower {source!r} is a {towers[source].kind!r}"
                        f" tower, {name!r} a {tower.kind!r} one; they must be of one kind")


def input_key(config, tower: str) -> str:
  """The batch key tower `tower` reads: its own name or its `input`."""
  return config.towers[tower].get("input") or tower


def batch_towers(config) -> list[str]:
  """Towers whose inputs are batch keys (every tower that reads its own input)."""
  return [n for n, t in config.towers.items() if not t.get("input")]


def _records_unroll(config) -> bool:
  """True when one record yields several examples: data.captions="all" on an image/caption
  source (tower-ready sources have no captions to unroll)."""
  return config.data.captions == "all" and config.data.source not in _READY_SOURCES


def group_positives(config) -> bool:
  """Whether the objective takes the batch's "group" ids (rows with equal ids are
  positives): `config.loss.positives` = "group", or "auto" where records unroll into
  several examples (data.captions="all": they share pixels, so they are not negatives of
  each other)."""
  positives = config.loss.positives
  return positives == "group" or (positives == "auto" and _records_unroll(config))


def default_pairs(config) -> list[tuple[str, str]]:
  """`loss.pairs`, or every pair of towers that read their own inputs, in sorted name
  order (ConfigDict keys are sorted)."""
  if config.loss.pairs:
    return [tuple(p.split(":")) for p in config.loss.pairs]
  names = batch_towers(config)
  return [(a, b) for i, a in enumerate(names) for b in names[i + 1:]]


def loss_pairs(config) -> list[tuple[str, str]]:
  """The (a, b) modality pairs the loss spans (every term's, in order of first use; a
  group term's every pair within its group); evaluation retrieves along each."""
  if not config.loss.get("terms"):
    return default_pairs(config)
  from xmodal.losses import terms   # noqa: PLC0415
  out = []
  for term in terms.resolve(config):
    for group in term.pairs:
      out += [p for i, a in enumerate(group) for p in ((a, b) for b in group[i + 1:])
              if p not in out]
  return out
