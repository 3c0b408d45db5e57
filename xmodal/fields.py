"""Config fields, each declared once: its default, its allowed values or range, its doc.

A *schema* is a dict {key: Field | schema}. From it come the default ConfigDict
(`defaults`), the checks every config passes before anything compiles (`check`: unknown
keys, with the closest known key for a typo; types; choices; ranges) and the config
reference in docs/config.md (`reference_rows`). Nothing about a field is written twice:
`xmodal/default_config.py` declares the run's fields, each tower kind's section declares
its own.

    Field(0.9, "Adam's first-moment decay", ge=0, lt=1)
    Field("softmax", "the objective", choices=("softmax", "sigmoid"))
    Field((0.8, 1.0), "crop area fraction (low, high)", gt=0, le=1)   # checks each item

`choices` may be a callable returning the allowed values, so that names of pluggable
things (tower kinds, sources, objectives) come from the registry they index.
"""

import dataclasses
import difflib
from typing import Any, Callable

import ml_collections


class ConfigError(ValueError):
  """A config value is wrong; the message starts with the field's dotted name."""


@dataclasses.dataclass(frozen=True)
class Field:
  """One config field. `ge`/`gt`/`le`/`lt` bound a number (each item of a tuple of
  numbers); `choices` lists the allowed values (of a string, or of each item of a tuple)."""
  default: Any
  doc: str
  choices: tuple | Callable[[], tuple] | None = None
  ge: float | None = None
  gt: float | None = None
  le: float | None = None
  lt: float | None = None

  def allowed(self) -> tuple | None:
    return self.choices() if callable(self.choices) else self.choices

  def range_text(self) -> str:
    """'[0, 1)', '> 0', '>= -1', ... or '' when unbounded."""
    low = f"[{_num(self.ge)}" if self.ge is not None else (
        f"({_num(self.gt)}" if self.gt is not None else None)
    high = f"{_num(self.le)}]" if self.le is not None else (
        f"{_num(self.lt)})" if self.lt is not None else None)
    if low and high:
      return f"{low}, {high}"
    if low:
      return (">= " if self.ge is not None else "> ") + low[1:]
    if high:
      return ("<= " if self.le is not None else "< ") + high[:-1]
    return ""

  def check(self, name: str, value) -> None:
    """Raises ConfigError naming `name` if `value` has the wrong type, choice or range."""
    check_type(name, value, self.default)
    items = value if isinstance(value, (tuple, list)) else (value,)
    allowed = self.allowed()
    if allowed is not None:
      for item in items:
        if item not in allowed:
          raise ConfigError(f"config.{name}: {item!r} is not one of {tuple(allowed)}")
    if self.range_text():
      for item in items:
        if isinstance(item, bool) or not isinstance(item, (int, float)):
          continue
        if not self._in_range(item):
          text = self.range_text()
          where = f"in {text}" if "," in text else text
          raise ConfigError(f"config.{name}: must be {where}, got {value!r}")

  def _in_range(self, x) -> bool:
    return ((self.ge is None or x >= self.ge) and (self.gt is None or x > self.gt)
            and (self.le is None or x <= self.le) and (self.lt is None or x < self.lt))


@dataclasses.dataclass(frozen=True)
class Named:
  """A section of entries the user names (evaluation tasks by task name), each checked by
  its owner against its own kind's fields; `check` only asks that it is a section.
  `default()` returns its default entries."""
  doc: str
  default: Callable[[], dict] = dict


def _num(x) -> str:
  return f"{x:g}" if isinstance(x, float) else str(x)


def check_type(name: str, value, expected) -> None:
  """The type rule of every field: that of its default (an int default accepts ints only, a
  float default ints or floats, a tuple default tuples or lists, bools only bools)."""
  if isinstance(expected, bool):
    ok = isinstance(value, bool)
  elif isinstance(expected, int):
    ok = isinstance(value, int) and not isinstance(value, bool)
  elif isinstance(expected, float):
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
  elif isinstance(expected, (tuple, list)):
    ok = isinstance(value, (tuple, list))
  else:
    ok = isinstance(value, type(expected))
  if not ok:
    raise ConfigError(
        f"config.{name}: expected {type(expected).__name__}, got {type(value).__name__} "
        f"({value!r})")


def defaults(schema: dict) -> ml_collections.ConfigDict:
  """The ConfigDict of a schema's defaults (sub-schemas become sub-sections)."""
  return ml_collections.ConfigDict({
      key: defaults(spec) if isinstance(spec, dict) else
      ml_collections.ConfigDict(spec.default()) if isinstance(spec, Named) else spec.default
      for key, spec in schema.items()})


def closest(key: str, known, prefix: str | None = None) -> str:
  """'; did you mean 'X'?' for the known name X nearest a typo, or ''; with `prefix` (a
  config section, "" at the top) the dotted key: '; did you mean config.<prefix>X?'."""
  match = difflib.get_close_matches(key, list(known), n=1, cutoff=0.5)
  if not match:
    return ""
  return f"; did you mean {match[0]!r}?" if prefix is None else (
      f"; did you mean config.{prefix}{match[0]}?")


def check(node, schema: dict, prefix: str = "", skip: tuple = ()) -> None:
  """Unknown keys, types, choices and ranges of `node` against `schema`, recursively.
  Keys in `skip` (at this level) are left to the caller (e.g. the towers, whose schema is
  their kind's)."""
  for key in node.keys():
    if key in skip:
      continue
    name = f"{prefix}{key}"
    if key not in schema:
      hint = closest(key, schema, prefix) or f" (known keys here: {', '.join(sorted(schema))})"
      raise ConfigError(f"config.{name}: unknown key{hint}")
    value, spec = node[key], schema[key]
    if isinstance(spec, Named):
      if not isinstance(value, (ml_collections.ConfigDict, dict)):
        raise ConfigError(f"config.{name}: expected a section of named entries, got {value!r}")
    elif isinstance(spec, dict):
      if not isinstance(value, (ml_collections.ConfigDict, dict)):
        raise ConfigError(f"config.{name}: expected a section, got {value!r}")
      check(value, spec, name + ".")
    else:
      spec.check(name, value)


def flat(schema: dict, prefix: str = "") -> dict:
  """{dotted key: Field} of a schema."""
  out = {}
  for key, spec in schema.items():
    if isinstance(spec, dict):
      out.update(flat(spec, f"{prefix}{key}."))
    else:
      out[f"{prefix}{key}"] = spec
  return out


def reference_rows(schema: dict, prefix: str = "") -> list[str]:
  """Markdown table rows `| key | default | allowed | doc |` for a schema."""
  rows = []
  for key, f in flat(schema, prefix).items():
    if isinstance(f, Named):
      names = ", ".join(f.default()) or "none"
      rows.append(f"| `{key}` | {names} | named sections | {f.doc} |")
      continue
    allowed = f.allowed()
    allowed = ", ".join(repr(a) for a in allowed) if allowed else f.range_text()
    cells = (f"`{key}`", f"`{_show(f.default)}`", allowed, f.doc)
    rows.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
  return rows


def _show(value) -> str:
  text = repr(value)
  return text if len(text) <= 40 else text[:37] + "..."
