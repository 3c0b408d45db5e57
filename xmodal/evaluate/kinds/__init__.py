"""Evaluation task kinds: one module per kind, found by name or module path.

`config.eval.tasks` maps task names to task sections; a task's `kind` names a module of
this package ("zeroshot", "retrieval", "linear_probe", "fewshot", "knn", "geometry") or any
importable module path ("mypkg.my_eval"). Every kind module has one contract:

    FIELDS = {name: Field(...)}         # its own config fields, declared once
    SPLITS = ("eval",)                  # the splits of the task's data it reads
                                        # (probes: ("train", "eval"))
    def run(context, task) -> dict      # {metric: float}; the harness prefixes "<task>/"
    def check(config, task, where)      # optional: cross-field rules, ConfigError naming
                                        # config.<where>.<field>
    def score(metrics) -> float | None  # optional: the task's one number in a suite table

Every task also has the COMMON fields below. Its `data` section holds `config.data` fields
that replace the run's for this task (`eval_source`, `eval_files`, `tfds_name`,
`tfds_eval_split`, `caption_key`, ...): the task reads that evaluation split, and kinds
that fit on a training split (linear_probe, fewshot, knn) also the training split of the
same source kind (`train_files` / `tfds_train_split`, ...). An empty `data` is the run's
own held-out split.

This package imports nothing heavy: configs are checked (and docs/config.md rendered)
without JAX; a kind imports its numerics inside `run`.
"""

import difflib
import importlib
import pkgutil
import re

import ml_collections

from xmodal.fields import ConfigError, Field

# A task's name is the first part of its metric names ("<task>/<metric>"): it must survive
# TensorBoard as it is (xmodal/metrics.py TAG), and "eval" is the harness's own prefix.
NAME = re.compile(r"[A-Za-z0-9_.-]+")
RESERVED_NAMES = ("eval",)

COMMON = dict(
    kind=Field("", "evaluator: a module of xmodal/evaluate/kinds ('zeroshot', 'retrieval', "
               "'linear_probe', 'fewshot', 'knn', 'geometry') or an importable module path"),
    every=Field(0, "steps between runs of this task while training; 0 = train.eval_every "
                "(every task also runs at the end and in `xmodal eval`)", ge=0),
    max_examples=Field(0, "rows of the evaluation split used (a seeded random subset, the "
                       "same every time); 0 = all", ge=0),
)
# The `data` section of a task: any `config.data` keys, checked against their declarations,
# except those that define the model's inputs (a task reads its data as the run does).
DATA = "data"
MODEL_DATA = ("image_size", "tokenizer", "tokenizer_path", "context_length", "lowercase",
              "image_dtype", "normalize")


class TaskError(ValueError):
  """A task cannot run on its data (no labels, no class names, a target field missing);
  the message starts with config.eval.tasks.<name>."""


def names() -> tuple[str, ...]:
  """The built-in kinds: the modules of this package."""
  return tuple(sorted(m.name for m in pkgutil.iter_modules(__path__)
                      if not m.name.startswith("_")))


def get(kind: str):
  """The module of a kind, by name or module path; ValueError if there is none."""
  if kind in names():
    return importlib.import_module(f"{__name__}.{kind}")
  try:
    module = importlib.import_module(kind) if kind and not kind.startswith(".") else None
  except ModuleNotFoundError as e:
    if "." in kind or e.name != kind:    # a path, or a module that imports something missing
      raise ValueError(f"cannot import evaluator module {kind!r}: {e}") from None
    module = None
  if module is None:
    raise ValueError(f"unknown evaluation kind {kind!r}; known: {', '.join(names())} (or a "
                     f"module path)")
  missing = [a for a in ("FIELDS", "run") if not hasattr(module, a)]
  if missing:
    raise ValueError(f"module {kind!r} is not an evaluator: it defines no "
                     f"{' or '.join(missing)} (see xmodal/evaluate/kinds/__init__.py)")
  return module


def fields(kind: str) -> dict:
  """Every field of a task of `kind` (COMMON, then the kind's)."""
  return {**COMMON, **get(kind).FIELDS}


def splits(kind: str) -> tuple[str, ...]:
  return tuple(getattr(get(kind), "SPLITS", ("eval",)))


def new(kind: str, **values) -> ml_collections.ConfigDict:
  """A task section of `kind` with every field at its default, then `values` (a `data`
  dict included): `config.eval.tasks.coco = kinds.new("retrieval", captions="all",
  data=dict(eval_source="manifest", eval_files="/d/coco_5k.jsonl"))`."""
  task = ml_collections.ConfigDict({k: f.default for k, f in fields(kind).items()})
  task.kind = kind
  task[DATA] = ml_collections.ConfigDict()
  for key, value in values.items():
    task[key] = ml_collections.ConfigDict(value) if isinstance(value, dict) else value
  return task


def with_defaults(task) -> ml_collections.ConfigDict:
  """A copy of a task section with the fields it leaves out at their defaults (its kind's
  fields; an unknown kind: the section as it is, for `check` to report)."""
  given = task.to_dict() if isinstance(task, ml_collections.ConfigDict) else dict(task)
  try:
    defaults = new(given.get("kind", "")).to_dict()
  except ValueError:
    return ml_collections.ConfigDict(given)
  defaults.update(given)
  return ml_collections.ConfigDict(defaults)


def fill(config) -> None:
  """Completes every task of `config.eval.tasks` with its kind's defaults, in place, so
  that `--config.eval.tasks.NAME.FIELD=...` can set any field of a task a config file
  gave in part."""
  tasks = config.get("eval", {}).get("tasks")
  if not isinstance(tasks, ml_collections.ConfigDict):
    return
  with tasks.unlocked():
    for name in list(tasks.keys()):
      if isinstance(tasks[name], (ml_collections.ConfigDict, dict)):
        tasks[name] = with_defaults(tasks[name])


def check(config) -> None:
  """Every task of config.eval.tasks: its name, kind, fields (COMMON and the kind's, with
  their types, choices and ranges), its `data` keys against config.data's declarations,
  the files of the splits it reads, and the kind's own rules. Raises ConfigError naming
  config.eval.tasks.<name>.<field>."""
  from xmodal import config as config_lib, default_config, fields as fields_lib  # noqa: PLC0415
  tasks = config.eval.get("tasks")
  if not isinstance(tasks, ml_collections.ConfigDict):
    raise ConfigError(f"config.eval.tasks: expected a section of named tasks, got {tasks!r}")
  for name, task in tasks.items():
    where = f"eval.tasks.{name}"
    if not NAME.fullmatch(name) or name in RESERVED_NAMES:
      raise ConfigError(f"config.{where}: a task name is the first part of its metric names: "
                        f"use letters, digits and _ - . only, not {RESERVED_NAMES}")
    if not isinstance(task, ml_collections.ConfigDict):
      raise ConfigError(f"config.{where}: expected a task section, got {task!r}")
    kind = task.get("kind", "")
    try:
      schema = fields(kind)
    except ValueError as e:
      close = difflib.get_close_matches(str(kind), names(), n=1, cutoff=0.5)
      hint = f"; did you mean {close[0]!r}?" if close and "." not in str(kind) else ""
      raise ConfigError(f"config.{where}.kind: {e}{hint}") from None
    fields_lib.check(task, schema, where + ".", skip=(DATA,))
    data = task.get(DATA, ml_collections.ConfigDict())
    if not isinstance(data, (ml_collections.ConfigDict, dict)):
      raise ConfigError(f"config.{where}.data: expected a section of config.data keys, got "
                        f"{data!r}")
    fields_lib.check(data, default_config.SCHEMA["data"], f"{where}.data.")
    for key in data.keys():
      if key in MODEL_DATA:
        raise ConfigError(f"config.{where}.data.{key}: defines the model's input, which a "
                          f"task cannot change (it reads its data as the run does)")
    full = with_defaults(task)
    from xmodal.evaluate import data as data_lib  # noqa: PLC0415
    split_config = data_lib.task_config(config, full)
    try:
      config_lib.validate_splits(split_config, splits(kind))
    except ConfigError as e:    # a task with data of its own: name the task's field
      message = str(e)
      if message.startswith("config.data.") and len(data):
        message = f"config.{where}.data.{message.removeprefix('config.data.')}"
      raise ConfigError(message) from None
    module = get(kind)
    if hasattr(module, "check"):
      module.check(config, full, where)
