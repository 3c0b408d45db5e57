"""A config from the command line: `--config=FILE.py[:ARG]` and `--config.KEY=VALUE`.

`load_file("configs/x.py:ARG")` runs the file's `get_config("ARG")` (`get_config()` when
no ARG is given). `apply_overrides(config, [("optim.lr", "1e-3"), ...])` sets existing keys
only, each value parsed by the type of the value it replaces: bool (true/false/1/0/yes/no),
int, float, str, tuple or list (ml_collections' tuple parser: `"(8, 1)"`, `"('a', 'b')"`,
or one bare element such as `image/.*`), and Python literals where the default is None.

Every way this can fail is one `ConfigError` line naming the file or the key, with the
closest existing key when a key is unknown. An exception raised by the config file's own
code (an import it lacks, a NameError) is that code's bug and keeps its traceback.
"""

import ast
import difflib
import inspect
import os
import types

import ml_collections
from ml_collections.config_flags import tuple_parser

from xmodal.config import ConfigError

# Where every key is listed with its default and meaning (generated from the schema).
DOCS = "docs/config.md"


def load_file(spec: str) -> ml_collections.ConfigDict:
  """"path/to/file.py[:ARG]" -> the ConfigDict its get_config returns."""
  path, has_arg, arg = spec.partition(":")
  if not os.path.isfile(path):
    raise ConfigError(f"--config: no such file {path!r}")
  try:
    with open(path, encoding="utf-8") as f:
      source = f.read()
  except UnicodeDecodeError:
    raise ConfigError(f"--config: {path} is not a UTF-8 Python file") from None
  try:
    code = compile(source, path, "exec")
  except SyntaxError as e:
    raise ConfigError(f"{path}:{e.lineno}: {e.msg} (--config)") from None
  module = types.ModuleType(os.path.splitext(os.path.basename(path))[0])
  module.__file__ = os.path.abspath(path)
  exec(code, module.__dict__)            # the file's own errors keep their traceback
  get_config = getattr(module, "get_config", None)
  if not callable(get_config):
    raise ConfigError(f"{path}: defines no get_config(arg) (--config)")
  args = (arg,) if has_arg else ()
  try:
    inspect.signature(get_config).bind(*args)
  except TypeError:
    if has_arg:
      raise ConfigError(f"{path}: get_config() takes no argument, but --config={spec} "
                        f"passes {arg!r}") from None
    raise ConfigError(f"{path}: get_config needs an argument: --config={path}:ARG") from None
  config = get_config(*args)
  if not isinstance(config, ml_collections.ConfigDict):
    got = "None" if config is None else f"a {type(config).__name__}"
    raise ConfigError(f"{path}: get_config returned {got}, expected an "
                      f"ml_collections.ConfigDict (did it forget `return config`?)")
  return config


def apply_overrides(config, overrides) -> None:
  """Sets each (dotted key, raw string or None) of `overrides` in `config`, in order.
  None is a bare `--config.KEY`: true for a bool key."""
  for key, raw in overrides:
    node, leaf = locate(config, key)
    node[leaf] = parse_value(key, raw, node[leaf])


def locate(config, key: str):
  """(section, name) holding the dotted `key`; ConfigError if there is no such value."""
  parts = key.split(".")
  node = config
  for i, part in enumerate(parts):
    if not isinstance(node, ml_collections.ConfigDict):
      raise ConfigError(f"config.{'.'.join(parts[:i])}: is a value, not a section, so it "
                        f"has no key {part!r}")
    if part not in node:
      raise ConfigError(unknown_key_message(config, key))
    if i < len(parts) - 1:
      node = node[part]
  if isinstance(node[parts[-1]], ml_collections.ConfigDict):
    example = next(iter(node[parts[-1]].keys()), "KEY")
    raise ConfigError(f"config.{key}: is a section; set its keys one by one, e.g. "
                      f"--config.{key}.{example}=...")
  return node, parts[-1]


def unknown_key_message(config, key: str) -> str:
  """'config.optim.lrate: unknown key; did you mean config.optim.lr? ...'."""
  known = list(dotted_keys(config))
  close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
  if not close:           # a right name in the wrong section: "lr" for "optim.lr"
    last = key.rsplit(".", 1)[-1]
    by_last = {k.rsplit(".", 1)[-1]: k for k in known}
    close = [by_last[m] for m in difflib.get_close_matches(last, list(by_last), n=1,
                                                            cutoff=0.8)]
  hint = f"; did you mean config.{close[0]}?" if close else ""
  return f"config.{key}: unknown key{hint} (every key: {DOCS})"


def dotted_keys(config, prefix: str = ""):
  """Every section and value name of `config`, dotted."""
  for k, v in config.items():
    yield prefix + k
    if isinstance(v, ml_collections.ConfigDict):
      yield from dotted_keys(v, f"{prefix}{k}.")


_TRUE, _FALSE = ("true", "t", "1", "yes", "y"), ("false", "f", "0", "no", "n")


def parse_value(key: str, raw: str | None, current):
  """The raw command-line string as a value of `current`'s type."""
  if raw is None:
    if isinstance(current, bool):
      return True
    raise ConfigError(f"config.{key}: needs a value: --config.{key}=VALUE")
  if isinstance(current, bool):
    if raw.lower() in _TRUE + _FALSE:
      return raw.lower() in _TRUE
    raise ConfigError(f"config.{key}: expected true or false, got {raw!r}")
  if isinstance(current, int):
    try:
      return int(raw)
    except ValueError:
      pass
    try:                   # 1e5 and 2_000 are integers too
      value = float(raw)
    except ValueError:
      value = None
    if value is None or not value.is_integer():
      raise ConfigError(f"config.{key}: expected an integer, got {raw!r}") from None
    return int(value)
  if isinstance(current, float):
    try:
      return float(raw)
    except ValueError:
      raise ConfigError(f"config.{key}: expected a number, got {raw!r}") from None
  if isinstance(current, str):
    return raw
  if isinstance(current, (tuple, list)):
    try:
      value = tuple_parser.TupleParser().parse(raw)
    except ValueError as e:
      raise ConfigError(f"config.{key}: {e}") from None
    return type(current)(value)
  if current is None:
    try:
      return ast.literal_eval(raw)
    except (ValueError, SyntaxError):
      return raw
  raise ConfigError(f"config.{key}: a {type(current).__name__} cannot be set from the "
                    f"command line; set it in a config file")
