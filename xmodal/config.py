"""Config checking: every config is validated before anything compiles.

`validate(config, num_devices)` checks the config against the fields declared in
`xmodal/default_config.py` (unknown keys, types, choices, ranges: `xmodal/fields.py`), then
the rules that relate fields to each other, and raises `ConfigError` with the dotted name of
the first bad field: a batch size that the devices cannot split, a path that matches no
files, a text context the tower cannot embed, ...
"""

import contextlib
import os
import re

import ml_collections

from xmodal import default_config, fields, towers as towers_lib
from xmodal.fields import ConfigError  # noqa: F401 (the project's config error type)

# Keys the data pipeline puts in every batch beside the modalities (xmodal/data/pipeline.py).
RESERVED_BATCH_KEYS = ("label", "skipped", "skipped_reasons", "epoch", "source", "group",
                       "caption")


class WorkdirError(FileNotFoundError):
  """A workdir lacks what was asked of it (its config.json, any checkpoint, a given step)."""


# Keys renamed since runs were saved: old dotted name -> new. Saved workdirs (config.json),
# older config files and command-line overrides spelled the old way keep working (`upgrade`,
# `rename_overrides`). init.from: `from` is a Python keyword, so ml_collections cannot parse
# `--config.init.from=...` as an override.
RENAMED = {"init.from": "init.source"}


def upgrade(config):
  """Moves renamed keys (RENAMED) to their new names, in place, in a ConfigDict or in the
  plain dict a config.json holds; returns it. Raises ConfigError when both names hold
  different non-empty values."""
  for old, new in RENAMED.items():
    *path, old_key = old.split(".")
    new_key = new.split(".")[-1]
    node = config
    for part in path:
      node = node.get(part) if hasattr(node, "get") else None
    if node is None or not hasattr(node, "keys") or old_key not in node.keys():
      continue
    value, current = node[old_key], node.get(new_key) or ""
    if value and current and value != current:
      raise ConfigError(f"config.{old}: the old name of config.{new}; both are set "
                        f"({value!r}, {current!r}): keep {new} only")
    locked = isinstance(node, ml_collections.ConfigDict)
    with node.unlocked() if locked else contextlib.nullcontext():
      del node[old_key]
      node[new_key] = value or current
  _add_default_tasks(config)
  return config


def _add_default_tasks(config) -> None:
  """A config saved before evaluation tasks existed evaluates as it did then: the default
  tasks (retrieval and zero-shot on its held-out split)."""
  section = config.get("eval") if hasattr(config, "get") else None
  if section is None or not hasattr(section, "keys") or "tasks" in section.keys():
    return
  tasks = default_config.default_tasks()
  if isinstance(section, ml_collections.ConfigDict):
    with section.unlocked():
      section.tasks = ml_collections.ConfigDict(tasks)
  else:
    section["tasks"] = {name: task.to_dict() for name, task in tasks.items()}


def rename_overrides(argv: list[str]) -> list[str]:
  """Command-line overrides with old key names (`--config.init.from=X`, or the flag and its
  value as two words) rewritten to the new names, before absl parses them."""
  out = []
  for arg in argv:
    for old, new in RENAMED.items():
      flag = f"--config.{old}"
      if arg == flag or arg.startswith(flag + "="):
        arg = f"--config.{new}" + arg[len(flag):]
    out.append(arg)
  return out



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
  try:
    module = towers_lib.get(kind)
  except ConfigError as e:
    raise ConfigError(f"config.towers.{modality}.kind: {e}") from None
  fields.check(tower, towers_lib.fields_of(kind), f"towers.{modality}.")
  if hasattr(module, "check"):
    module.check(config, modality, tower)
  elif "num_heads" in tower and tower.width % tower.num_heads:
    raise ConfigError(
        f"config.towers.{modality}.width: {tower.width} is not divisible by num_heads "
        f"{tower.num_heads}")
  width = towers_lib.output_width(tower)
  if tower.get("head") == "none" and width != config.model.embed_dim:
    raise ConfigError(
        f"config.towers.{modality}.head: 'none' needs width {width} == "
        f"model.embed_dim {config.model.embed_dim}")


def validate(config, num_devices: int) -> None:
  """Raises ConfigError naming the first bad field; returns None when the config is usable."""
  towers = config.get("towers")
  if not isinstance(towers, ml_collections.ConfigDict) or len(towers) < 2:
    raise ConfigError("config.towers: needs at least two towers (one per modality)")
  for old, new in RENAMED.items():
    section, _, key = old.rpartition(".")
    if key in config.get(section, {}):
      raise ConfigError(f"config.{old}: renamed config.{new}")
  fields.check(config, default_config.SCHEMA, skip=("towers",))
  for modality, tower in towers.items():
    _check_tower(config, modality, tower)
  _check_inputs(towers)
  _check_record_towers(config)

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
  text_fits_towers(config)
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
  source = config.init.source
  if source and not os.path.exists(os.path.expanduser(source)):
    raise ConfigError(f"config.init.source: no such file or directory {source!r}")
  if config.init.map and not source:    # else the map would silently do nothing
    raise ConfigError("config.init.map: set, but config.init.source is empty: nothing to map "
                      "from; set config.init.source to converted weights or a workdir")
  for pair in config.init.map:
    if len(pair) != 2 or not all(isinstance(p, str) for p in pair):
      raise ConfigError(f"config.init.map: {pair!r} must be (dst_regex, src_template)")
  for field in ("train.frozen", "train.unfrozen"):
    for pattern in _get(config, field):
      try:
        re.compile(pattern)
      except (re.error, TypeError) as e:
        raise ConfigError(f"config.{field}: {pattern!r} is not a regex ({e})") from None
  _validate_eval_prompts(config)
  _validate_eval_tasks(config)


def _check_record_towers(config) -> None:
  """Sources of records (everything but synthetic / features) feed each tower through its
  kind's preparer; captions="all" unrolls the captions of one text tower."""
  if config.data.source in _ready_sources():
    if config.data.captions == "k":
      raise ConfigError(f"config.data.captions: 'k' needs a source of records with captions, "
                        f"got data.source={config.data.source!r}")
    return
  for name, tower in config.towers.items():
    if tower.get("input"):          # a teacher or reference tower: reads another's input
      continue
    if not hasattr(towers_lib.get(tower.kind), "preparer"):
      raise ConfigError(
          f"config.towers.{name}.kind: {tower.kind!r} has no preparer (it reads tower-ready "
          f"arrays only), so data.source={config.data.source!r} cannot feed it; use "
          f"data.source='synthetic' or 'features'")
  text = [n for n, t in config.towers.items() if t.kind == "text" and not t.get("input")]
  if config.data.captions in ("all", "k") and len(text) != 1:
    raise ConfigError(f"config.data.captions: {config.data.captions!r} reads the captions of "
                      f"one text tower, but there are {len(text)} ({text})")


def _validate_eval_split(config):
  from xmodal.data import source_kinds   # noqa: PLC0415
  d = config.data
  source_kinds.get(d.eval_source or d.source).check(config, "eval")


def _validate_train_split(config):
  """Each part of the train split checks its own fields (xmodal/data/source_kinds)."""
  from xmodal.data import pipeline, source_kinds   # noqa: PLC0415
  d = config.data
  if d.source == "mixture":
    try:
      parts = pipeline.parse_mixture(d.mixture)
    except ValueError as e:
      raise ConfigError(f"config.data.mixture: {e}") from None
    for kind, pattern, _ in parts:
      source_kinds.get(kind).check(config, "train", "data.mixture", pattern)
  else:
    source_kinds.get(d.source).check(config, "train")


def validate_splits(config, splits) -> None:
  """The files of the given splits ("train", "eval") of config.data exist."""
  if "train" in splits:
    _validate_train_split(config)
  if "eval" in splits:
    _validate_eval_split(config)


def _validate_eval_tasks(config):
  """Each task of config.eval.tasks: its kind, fields, data and the kind's own rules."""
  from xmodal.evaluate import kinds
  kinds.check(config)


def _validate_eval_prompts(config):
  if config.eval.classnames and not os.path.exists(config.eval.classnames):
    raise ConfigError(f"config.eval.classnames: no such file {config.eval.classnames!r}")
  for template in config.eval.templates:
    if "{}" not in template:
      raise ConfigError(f"config.eval.templates: {template!r} has no '{{}}' for the class name")


def validate_eval(config, splits=(), tasks: bool = True) -> None:
  """What `xmodal eval` needs of a trained run's config with new evaluation fields: their
  declared types, choices and ranges, the zero-shot prompts and the tasks, each with the
  files of the splits it reads (the run's own splits need exist only where a task reads
  them). `xmodal embed` asks for the split it reads (`splits`) and no tasks."""
  for section in ("data", "eval"):
    fields.check(config[section], default_config.SCHEMA[section], section + ".")
  validate_splits(config, splits)
  if tasks:
    _validate_eval_prompts(config)
    _validate_eval_tasks(config)


def _validate_data(config):
  d = config.data
  from xmodal.data import tokenizer
  _validate_train_split(config)
  if d.source == "mixture" and not d.eval_source:
    raise ConfigError("config.data.eval_source: required when data.source='mixture' (the "
                      "kind of the eval split, read from data.eval_files / tfds_eval_split)")
  _validate_eval_split(config)
  # Images and text.
  if d.image_dtype == "uint8" and d.normalize != "none":
    raise ConfigError(f"config.data.normalize: {d.normalize!r} needs data.image_dtype="
                      f"'float32' (uint8 images are normalised by the image tower)")
  bg = d.alpha_background
  if len(bg) != 3 or not all(isinstance(c, int) and not isinstance(c, bool) for c in bg):
    raise ConfigError(f"config.data.alpha_background: expected (r, g, b) with ints in 0..255, "
                      f"got {tuple(bg)!r}")
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


def text_fits_towers(config) -> None:
  """data.context_length tokens must fit each text tower's position table (its
  context_length; 0 = the data's, which always fits): a converted tower has the length its
  weights were trained with."""
  length = config.data.context_length
  for name, tower in config.towers.items():
    table = tower.get("context_length", 0) if tower.get("kind") == "text" else 0
    if table and length > table:
      raise ConfigError(
          f"config.data.context_length: {length} tokens do not fit "
          f"config.towers.{name}.context_length {table} (the tower's position table); set "
          f"data.context_length <= {table}")


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
  return config.data.captions == "all" and config.data.source not in _ready_sources()


def _ready_sources() -> tuple[str, ...]:
  """Sources of tower-ready records, no captions (xmodal/data/source_kinds READY)."""
  from xmodal.data import source_kinds   # noqa: PLC0415
  return source_kinds.ready_kinds()


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
