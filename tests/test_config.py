"""Config checking: every bad value fails before compiling, naming its field."""

import json
import os
import subprocess
import sys

import pytest

from xmodal import config as config_lib, default_config


def test_default_config_is_valid():
  config_lib.validate(default_config.get_config(), num_devices=8)


@pytest.mark.parametrize("mutate, field", [
    (lambda c: c.optim.__setattr__("learning_rate", 1e-3), "config.optim.learning_rate"),
    (lambda c: c.towers.image.__setattr__("widht", 64), "config.towers.image.widht"),
    (lambda c: c.loss.__setattr__("name", "hinge"), "config.loss.name"),
    (lambda c: c.towers.text.__setattr__("pool", "max"), "config.towers.text.pool"),
    (lambda c: c.__setattr__("batch_size", 100), "config.batch_size"),
    (lambda c: c.mesh.__setattr__("data", 3), "config.mesh"),
    (lambda c: c.towers.image.__setattr__("kind", "resnet"), "config.towers.image.kind"),
    (lambda c: c.loss.__setattr__("pairs", ("image:audio",)), "config.loss.pairs"),
    (lambda c: c.data.__setattr__("image_size", 30), "config.data.image_size"),
    (lambda c: c.towers.text.__setattr__("width", 98), "config.towers.text.width"),
    (lambda c: c.optim.__setattr__("warmup_steps", 10_000), "config.optim.warmup_steps"),
    # The byte tokenizer's EOS (1) is not its highest id: argmax would pool a random byte.
    (lambda c: c.towers.text.__setattr__("pool", "argmax"), "config.towers.text.pool"),
    # Ids 200..257 would fall past the embedding table.
    (lambda c: c.towers.text.__setattr__("vocab_size", 200), "config.towers.text.vocab_size"),
    (lambda c: c.loss.__setattr__("positives", "multi"), "config.loss.positives"),
    (lambda c: c.towers.__setattr__("group", c.towers.text), "config.towers.group"),
    (lambda c: c.loss.__setattr__("positives", "group"), "config.loss.positives"),  # captions
    # A map with nothing to map from would silently load nothing.
    (lambda c: c.init.__setattr__("map", ((r"image/(.*)", r"\1"),)), "config.init.map"),
])
def test_bad_value_names_its_field(mutate, field):
  config = default_config.get_config()
  with config.unlocked():
    mutate(config)
  with pytest.raises(config_lib.ConfigError) as err:
    config_lib.validate(config, num_devices=8)
  assert str(err.value).startswith(field), str(err.value)


def test_unknown_key_in_a_config_file_names_the_closest_key():
  config = default_config.get_config()
  with config.unlocked():
    config.towers.image.widht = 64
  with pytest.raises(config_lib.ConfigError,
                     match=r"^config.towers.image.widht: unknown key; did you mean "
                           r"config.towers.image.width\?$"):
    config_lib.validate(config, num_devices=8)


def test_manifest_path_matching_nothing(tmp_path):
  config = default_config.get_config()
  config.data.source = "manifest"
  config.data.train_manifest = str(tmp_path / "nothing-*.jsonl")
  config.data.eval_manifest = str(tmp_path / "nothing-*.jsonl")
  with pytest.raises(config_lib.ConfigError, match=r"^config.data.train_manifest: no file"):
    config_lib.validate(config, num_devices=1)


def test_wrong_type_from_a_config_file(tmp_path):
  path = tmp_path / "exp.py"
  path.write_text(
      "from xmodal import default_config\n"
      "def get_config(arg=None):\n"
      "  c = default_config.get_config()\n"
      "  c.unlock()\n"
      "  del c.train['total_steps']\n"
      "  c.train.total_steps = 'ten'\n"
      "  return c\n")
  result = subprocess.run([sys.executable, "-m", "xmodal.cli", "train", f"--config={path}",
                           f"--workdir={tmp_path / 'run'}"], capture_output=True, text=True,
                          timeout=120)
  assert result.returncode == 2
  assert "config.train.total_steps: expected int, got str" in result.stderr
  assert not (tmp_path / "run" / "checkpoints").exists()


def test_unknown_override_on_the_command_line(tmp_path):
  result = subprocess.run([sys.executable, "-m", "xmodal.cli", "train", "--config.optim.lrate=1",
                           f"--workdir={tmp_path}"], capture_output=True, text=True, timeout=120)
  assert result.returncode != 0
  assert "lrate" in result.stderr


def test_loss_pairs_default_to_every_pair():
  config = default_config.get_config()
  with config.unlocked():
    config.towers.audio = default_config.text_defaults()
  assert config_lib.loss_pairs(config) == [("audio", "image"), ("audio", "text"),
                                           ("image", "text")]
  config.loss.pairs = ("image:audio",)
  assert config_lib.loss_pairs(config) == [("image", "audio")]


def test_resuming_with_a_different_config_is_refused(tmp_path, tiny_config):
  from xmodal import train
  config = tiny_config()
  train.save_config(config, str(tmp_path))
  config.train.total_steps = 99            # allowed: train longer
  train.save_config(config, str(tmp_path))
  config.towers.image.width = 64           # not allowed: another model
  with pytest.raises(config_lib.ConfigError, match=r"^config.towers.image.width"):
    train.save_config(config, str(tmp_path))
  assert json.load(open(os.path.join(tmp_path, "config.json")))["train"]["total_steps"] == 99
  # A run saved before a key existed resumes if the key keeps its default, not otherwise.
  config.towers.image.width = tiny_config().towers.image.width
  saved = json.load(open(os.path.join(tmp_path, "config.json")))
  del saved["loss"]["positives"], saved["towers"]["text"]["pool"]
  with open(os.path.join(tmp_path, "config.json"), "w") as f:
    json.dump(saved, f)
  train.save_config(config, str(tmp_path))
  saved = json.load(open(os.path.join(tmp_path, "config.json")))
  del saved["loss"]["positives"]
  with open(os.path.join(tmp_path, "config.json"), "w") as f:
    json.dump(saved, f)
  config.loss.positives = "pair"
  with pytest.raises(config_lib.ConfigError, match=r"^config.loss.positives: .*'auto'"):
    train.save_config(config, str(tmp_path))


def test_group_positives_follow_captions_all_unless_told():
  config = default_config.get_config()
  assert not config_lib.group_positives(config)            # auto, captions="sample"
  config.data.captions = "all"
  assert config_lib.group_positives(config)                # auto, captions="all"
  config.loss.positives = "pair"                           # copies as negatives, explicitly
  assert not config_lib.group_positives(config)
  config.loss.positives = "group"
  config_lib.validate(config, num_devices=8)
  assert config_lib.group_positives(config)
  config.loss.positives = "auto"
  config.data.source = "synthetic"                         # tower-ready records: no captions
  assert not config_lib.group_positives(config)
  config.loss.positives = "group"
  with pytest.raises(config_lib.ConfigError, match=r"^config\.loss\.positives: 'group' needs"):
    config_lib.validate(config, num_devices=8)
