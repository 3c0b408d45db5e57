"""Tower kinds: one module per kind, found from the config by name or module path.

`config.towers.<modality>.kind` is either the name of a module in this package ("vit",
"text", "audio", "video", "volume", "vector", "signal") or the dotted path of a module
anywhere on the Python path ("mypkg.towers.my_tower"). Adding a kind is one new file; no
list elsewhere names the kinds. Each kind module exports one contract:

  FIELDS        {key: fields.Field}: the tower section's fields (`kind` is added here)
  build(cfg, config, dtype, name) -> flax Module: inputs [B, ...] (and train=) -> pooled
                features [B, W]; the model adds the head (models/model.py)
  input_spec(cfg, config) -> (per-example shape, numpy dtype): the tower's input, used for
                dummy inputs at init and for shape checks
  and optionally
  check(config, name, cfg)      cross-field rules; raises fields.ConfigError naming a field
  preparer(cfg, config) -> a picklable callable (value, train, rng) -> tower input [shape]:
                turns a decoded record value into one example (raises bad.BadData for a
                value it cannot use); without it the kind reads tower-ready arrays only
  EXTENSIONS    file extensions / webdataset members this kind reads by default
  DEFAULT_FIELD the record field that feeds the tower when `field` is '' (default: the
                modality name)
  synthetic(cfg, config, labels, rng, num_classes) -> [n, ...] generated inputs
  output_width(cfg) -> W of the pooled features (default: cfg.width)

Module names starting with "_" are helpers, not kinds.
"""

import functools
import importlib
import pkgutil

from xmodal import fields
from xmodal.fields import ConfigError, Field

CONTRACT = ("FIELDS", "build", "input_spec")


@functools.cache
def kinds() -> tuple[str, ...]:
  """The kinds that ship with xmodal: the public modules of this package."""
  return tuple(sorted(m.name for m in pkgutil.iter_modules(__path__)
                      if not m.name.startswith("_")))


@functools.cache
def get(kind: str):
  """The module of a tower kind: a name from `kinds()` or a dotted module path. Raises
  ConfigError (message without the field name: callers prefix it) for an unknown kind or
  a module that does not export the contract."""
  if not isinstance(kind, str) or not kind:
    raise ConfigError(f"tower kind must be a name or module path, got {kind!r}")
  if "." not in kind:
    if kind not in kinds():
      raise ConfigError(f"unknown tower kind {kind!r}{fields.closest(kind, kinds())} (known: "
                        f"{', '.join(kinds())}; or a module path such as 'mypkg.my_tower')")
    path = f"{__name__}.{kind}"
  else:
    path = kind
  try:
    module = importlib.import_module(path)
  except ModuleNotFoundError as e:
    if not path.startswith(str(e.name)):
      raise                                   # the module exists but imports something missing
    raise ConfigError(f"tower kind {kind!r}: no module {path!r} on the Python path") from None
  missing = [name for name in CONTRACT if not hasattr(module, name)]
  if missing:
    raise ConfigError(f"tower kind {kind!r}: module {module.__name__} lacks {missing} "
                      f"(a tower kind exports {', '.join(CONTRACT)}; see xmodal/towers)")
  return module


def known(kind) -> bool:
  try:
    get(kind)
    return True
  except ConfigError:
    return False


def fields_of(kind: str) -> dict:
  """The declared fields of one tower kind, `kind` first."""
  return {"kind": Field(kind, "tower kind: a module of xmodal/towers or a module path"),
          **get(kind).FIELDS}


def defaults(kind: str):
  """The defaults of one tower kind, as a config section."""
  return fields.defaults(fields_of(kind))


def with_defaults(cfg):
  """A tower section over its kind's defaults (configs saved before a field existed)."""
  full = defaults(cfg.kind)
  full.update(cfg.to_dict())
  return full


def default_field(name: str, cfg) -> str:
  """The record field feeding tower `name`: cfg.field, else the kind's DEFAULT_FIELD, else
  the modality name."""
  if cfg.get("field"):
    return cfg.field
  return getattr(get(cfg.kind), "DEFAULT_FIELD", name)


def output_width(cfg) -> int:
  module = get(cfg.kind)
  return module.output_width(cfg) if hasattr(module, "output_width") else cfg.width
