"""Source kinds: one module per `data.source` value, found by name (the modules of this
package). Each exports

  where(config, split) -> (field, pattern)   what `open` reads for "train" / "eval" and the
                                  config field that holds it: file patterns
                                  (data.train_files...), a tfds split, or "" (generated)
  check(config, split, field=None, pattern=None)   raises fields.ConfigError naming the
                                  field when the split (or a mixture entry's pattern, given
                                  with its field) cannot be opened: no file matches, no
                                  tfds name...
  open(pattern, config, split)    a grain random-access source of raw records
  READY                           True when records are already tower inputs (generated
                                  pairs, cached features): no decoding or preparation
  MIXABLE                         True when it may be an entry of data.mixture

"mixture" (data.mixture: weighted entries of mixable kinds) is the pipeline's own.
Adding a source is one new module here plus its test.
"""

import functools
import importlib
import pkgutil


@functools.cache
def kinds() -> tuple[str, ...]:
  return tuple(sorted(m.name for m in pkgutil.iter_modules(__path__)
                      if not m.name.startswith("_")))


@functools.cache
def get(kind: str):
  if kind not in kinds():
    raise ValueError(f"unknown source kind {kind!r}; known: {', '.join(kinds())}")
  return importlib.import_module(f"{__name__}.{kind}")


def choices() -> tuple[str, ...]:
  """Allowed values of data.source."""
  return kinds() + ("mixture",)


def eval_choices() -> tuple[str, ...]:
  """Allowed values of data.eval_source ('' = data.source)."""
  return ("",) + kinds()


def ready_kinds() -> tuple[str, ...]:
  return tuple(k for k in kinds() if get(k).READY)


def mixable_kinds() -> tuple[str, ...]:
  return tuple(k for k in kinds() if get(k).MIXABLE)
