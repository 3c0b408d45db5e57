"""The objectives: one module per objective in this package, found by its module name
(`loss.name`, `loss.terms.<term>.objective`). Nothing else lists them: the config's choices,
the docs' table and the driver-equivalence tests iterate `names()`.

An objective module exports (softmax.py is the shortest example):

  docstring                the formula, the paper and its defaults
  FAMILY                   families.SOFTMAX or families.SIGMOID
  INIT                     (scale, bias or None): a term's own learnable scale (and bias) at
                           initialisation
  FIELDS                   {option: fields.Field}: the term's options, with the paper's defaults
  contrast(opts)           -> engine.Contrast: the per-tile math (score and targets)
  blocks(opts, ctx, a, b)  -> (rows, cols, consts): rows from tower a, columns from tower b,
                           and constants the targets read (theta), from the step's
                           `terms.Context`
and optionally
  needs(opts, a, b)        -> {"towers": (...), "batch": (...), "ema": (...)}: embeddings of
                           frozen towers (teachers, references), batch keys and EMA copies of
                           towers the step must provide (an objective with EMA copies has a
                           `momentum` option: their decay)
  check(opts, config, where)   cross-field rules; raise fields.ConfigError naming `where`+field
  enqueue(opts, cols)      -> what a feature queue keeps of this step's columns (default: the
                           columns, without gradient)
  EXAMPLE                  options the driver-equivalence tests run it with
  GROUP                    True: the term's `pairs` are groups of towers 'a:b:c' and
                           `blocks(opts, ctx, *towers)` returns groups.Parts (several driver
                           calls and a local part: losses/groups.py); MIN_TOWERS: the least
                           group size (default 2)
  SHARD_DRAWS              True: random draws per device shard (the value depends on the
                           shard count: mixup's partners, Symile's negatives)
  TOKENS                   True: reads token features '<tower>:tokens' / '<tower>:mask'
                           (towers.<name>.tokens), FILIP
  VIEWS                    True: reads '<tower>:view', a second augmented view (data.views)
"""

import importlib
import pkgutil

import ml_collections


def names() -> tuple[str, ...]:
  """Every objective's name (its module's), sorted."""
  return tuple(sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_")))


def get(name: str):
  if name not in names():
    raise ValueError(f"unknown objective {name!r}; known: {', '.join(names())}")
  return importlib.import_module(f"{__name__}.{name}")


def default_options(name: str) -> ml_collections.ConfigDict:
  """The objective's options at their defaults."""
  from xmodal import fields   # noqa: PLC0415
  return fields.defaults(get(name).FIELDS)
