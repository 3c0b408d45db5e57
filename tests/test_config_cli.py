"""Config files and command-line overrides: values parsed by the type they replace, every
failure one ConfigError naming the file or key."""

import pytest

from xmodal import config_cli, default_config
from xmodal.config import ConfigError


def _set(*overrides):
  config = default_config.get_config()
  config_cli.apply_overrides(config, overrides)
  return config


def test_values_take_the_type_of_the_key_they_replace():
  c = _set(("batch_size", "256"), ("train.total_steps", "1e3"), ("optim.lr", "3e-4"),
           ("loss.name", "sigmoid"), ("data.flip", "True"), ("mesh.data", "-1"),
           ("towers.image.variant", "B/16"), ("data.crop_scale", "(0.5, 1)"),
           ("train.frozen", "image/.*"), ("train.unfrozen", "('image/head/.*', 'x')"),
           ("sharding.rules", "(('batch', 'data'), ('embed', None))"))
  assert (c.batch_size, c.train.total_steps, c.optim.lr) == (256, 1000, 3e-4)
  assert isinstance(c.optim.lr, float) and c.loss.name == "sigmoid" and c.data.flip is True
  assert c.mesh.data == -1 and c.towers.image.variant == "B/16"
  assert c.data.crop_scale == (0.5, 1)
  assert c.train.frozen == ("image/.*",)               # one bare element: a 1-tuple
  assert c.train.unfrozen == ("image/head/.*", "x")
  assert c.sharding.rules == (("batch", "data"), ("embed", None))
  assert _set(("data.flip", None)).data.flip is True    # bare --config.data.flip
  assert _set(("data.flip", "no")).data.flip is False


@pytest.mark.parametrize("key, raw, message", [
    ("optim.lrate", "1", r"^config.optim.lrate: unknown key; did you mean config.optim.lr\?"),
    ("lr", "1", r"^config.lr: unknown key; did you mean config.optim.lr\?"),
    ("batchsize", "1", r"^config.batchsize: unknown key; did you mean config.batch_size\?"),
    ("towers.image.widht", "1",
     r"^config.towers.image.widht: unknown key; did you mean config.towers.image.width\?"),
    ("zzz", "1", r"^config.zzz: unknown key \(every key: docs/config.md\)$"),
    ("batch_size", "12.5", r"^config.batch_size: expected an integer, got '12.5'$"),
    ("batch_size", None, r"^config.batch_size: needs a value"),
    ("optim.lr", "fast", r"^config.optim.lr: expected a number, got 'fast'$"),
    ("data.flip", "maybe", r"^config.data.flip: expected true or false, got 'maybe'$"),
    ("optim", "1", r"^config.optim: is a section"),
    ("batch_size.x", "1", r"^config.batch_size: is a value, not a section"),
    ("train.frozen", "a b", r"^config.train.frozen: "),
])
def test_a_bad_override_is_one_error_naming_the_key(key, raw, message):
  with pytest.raises(ConfigError, match=message) as err:
    _set((key, raw))
  assert "\n" not in str(err.value)


def _write(tmp_path, name, text):
  path = tmp_path / name
  path.write_text(text)
  return str(path)


GOOD = "from xmodal import default_config\n"


@pytest.mark.parametrize("name, text, arg, message", [
    ("syntax.py", GOOD + "def get_config(arg=None)\n  return None\n", None,
     r"syntax.py:2: expected ':' \(--config\)$"),
    ("none.py", GOOD + "def get_config(arg=None):\n  c = default_config.get_config()\n", None,
     r"none.py: get_config returned None, expected an ml_collections.ConfigDict"),
    ("dict.py", "def get_config(arg=None):\n  return {'batch_size': 1}\n", None,
     r"dict.py: get_config returned a dict"),
    ("noarg.py", GOOD + "def get_config():\n  return default_config.get_config()\n", "x",
     r"noarg.py: get_config\(\) takes no argument, but --config=.*noarg.py:x passes 'x'$"),
    ("needsarg.py", GOOD + "def get_config(arg):\n  return default_config.get_config()\n", None,
     r"needsarg.py: get_config needs an argument: --config=.*needsarg.py:ARG$"),
    ("nofn.py", GOOD + "CONFIG = 1\n", None, r"nofn.py: defines no get_config"),
])
def test_every_way_a_config_file_fails_to_load_is_one_line(tmp_path, name, text, arg, message):
  path = _write(tmp_path, name, text)
  with pytest.raises(ConfigError, match=message) as err:
    config_cli.load_file(path if arg is None else f"{path}:{arg}")
  assert "\n" not in str(err.value)
  with pytest.raises(ConfigError, match=r"^--config: no such file '.*missing.py'$"):
    config_cli.load_file(str(tmp_path / "missing.py"))


def test_a_bug_in_the_config_file_keeps_its_traceback(tmp_path):
  path = _write(tmp_path, "bug.py", "def get_config(arg=None):\n  return 1 / 0\n")
  with pytest.raises(ZeroDivisionError):
    config_cli.load_file(path)
  path = _write(tmp_path, "imports.py", "import no_such_module_xyz\n")
  with pytest.raises(ModuleNotFoundError):
    config_cli.load_file(path)


def test_the_argument_reaches_get_config(tmp_path):
  path = _write(tmp_path, "arg.py", GOOD + "def get_config(arg=None):\n"
                "  c = default_config.get_config()\n  c.data.train_files = arg or ''\n"
                "  return c\n")
  assert config_cli.load_file(f"{path}:/d/a.jsonl,/d/b.jsonl").data.train_files == \
      "/d/a.jsonl,/d/b.jsonl"
  assert config_cli.load_file(path).data.train_files == ""
