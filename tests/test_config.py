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
    # Ranges, each declared with its field (xmodal/default_config.py).
    (lambda c: c.loss.__setattr__("max_scale", -1.0), "config.loss.max_scale: must be > 0"),
    (lambda c: c.loss.__setattr__("max_scale", 0.0), "config.loss.max_scale: must be > 0"),
    (lambda c: c.loss.__setattr__("init_scale", -1.0), "config.loss.init_scale: must be >= 0"),
    (lambda c: c.optim.__setattr__("b1", 1.0), "config.optim.b1: must be in [0, 1)"),
    (lambda c: c.optim.__setattr__("b2", -0.1), "config.optim.b2: must be in [0, 1)"),
    (lambda c: c.optim.__setattr__("eps", -1e-8), "config.optim.eps: must be >= 0"),
    (lambda c: c.optim.__setattr__("weight_decay", -0.1), "config.optim.weight_decay"),
    (lambda c: c.optim.__setattr__("end_lr_fraction", -0.5), "config.optim.end_lr_fraction"),
    (lambda c: c.optim.__setattr__("end_lr_fraction", 2.0), "config.optim.end_lr_fraction"),
    (lambda c: c.train.__setattr__("frozen", ("image/(",)), "config.train.frozen"),
    (lambda c: c.data.__setattr__("crop_scale", (0.5, 1.5)), "config.data.crop_scale"),
    (lambda c: c.data.__setattr__("crop_scale", (0.9, 0.5)), "config.data.crop_scale"),
    (lambda c: c.towers.image.__setattr__("patch_dropout", 1.0), "config.towers.image.patch_dropout"),
    (lambda c: c.towers.text.__setattr__("layer_norm_eps", 0.0), "config.towers.text.layer_norm_eps"),
    (lambda c: c.train.__setattr__("eval_every", -1), "config.train.eval_every"),
    (lambda c: c.data.__setattr__("max_image_pixels", -1), "config.data.max_image_pixels"),
    (lambda c: c.data.__setattr__("alpha_background", (255, 255)),
     "config.data.alpha_background"),
    (lambda c: c.data.__setattr__("alpha_background", (0, 0, 256)),
     "config.data.alpha_background"),
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


def test_every_numeric_field_declares_its_range():
  """A number without a declared range is a hole in validation (the logit bias is the one
  field that may be any real)."""
  from xmodal import fields
  declared = dict(fields.flat(default_config.SCHEMA))
  for kind in default_config.tower_kinds():
    declared.update({f"towers.{kind}.{k}": f
                     for k, f in default_config.tower_fields(kind).items()})
  unbounded = [k for k, f in declared.items()
               if isinstance(f.default, (int, float)) and not isinstance(f.default, bool)
               and not f.range_text() and k != "loss.init_bias"]
  assert not unbounded


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


@pytest.mark.slow
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


@pytest.mark.slow
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


def test_data_context_length_must_fit_each_text_tower():
  """A text tower with its own position table (a converted one: 20 positions) cannot take
  longer data; the error names both fields."""
  config = default_config.get_config()
  config.towers.text.context_length = 20
  with pytest.raises(config_lib.ConfigError,
                     match=r"^config.data.context_length: 48 .*towers.text.context_length 20"):
    config_lib.validate(config, num_devices=8)
  config.data.context_length = 20
  config_lib.validate(config, num_devices=8)


def test_init_from_is_now_init_source_and_the_old_name_still_works(tmp_path, tiny_config):
  """`from` is a Python keyword (ml_collections cannot parse --config.init.from=...): the key
  is init.source; config files, saved workdirs and overrides with the old name still work."""
  from xmodal import train
  config = default_config.get_config()
  with config.unlocked():
    del config.init["source"]
    config.init["from"] = "w/params.safetensors"          # an older config file
  with pytest.raises(config_lib.ConfigError,
                     match=r"^config.init.from: renamed config.init.source"):
    config_lib.validate(config, num_devices=8)
  config_lib.upgrade(config)
  assert config.init.source == "w/params.safetensors" and "from" not in config.init
  assert config_lib.rename_overrides(["xmodal", "--config.init.from=a", "--config.init.from",
                                      "b", "--config.init.map=()"]) == [
      "xmodal", "--config.init.source=a", "--config.init.source", "b", "--config.init.map=()"]
  # A workdir saved with init.from resumes under the new name.
  config = tiny_config()
  train.save_config(config, str(tmp_path))
  saved = json.load(open(tmp_path / "config.json"))
  saved["init"]["from"] = saved["init"].pop("source")
  (tmp_path / "config.json").write_text(json.dumps(saved))
  train.save_config(config, str(tmp_path))
  assert json.load(open(tmp_path / "config.json"))["init"] == {"source": "", "map": []}


@pytest.mark.slow
def test_init_from_override_works_as_documented(tmp_path):
  """The README's override, spelled the old way, reaches init.source (here: a missing file,
  reported in one line naming the field) instead of crashing in ml_collections."""
  missing = tmp_path / "weights" / "params.safetensors"
  result = subprocess.run([sys.executable, "-m", "xmodal.cli", "train",
                           f"--config.init.from={missing}", f"--workdir={tmp_path / 'run'}"],
                          capture_output=True, text=True, timeout=120)
  assert result.returncode == 2, result.stderr
  assert result.stderr.strip().splitlines() == [
      f"xmodal train: error: config.init.source: no such file or directory '{missing}'"]


def test_a_config_saved_before_evaluation_tasks_evaluates_with_the_default_tasks(tmp_path):
  from xmodal import notebook
  saved = json.loads(default_config.get_config().to_json())
  del saved["eval"]["tasks"]
  (tmp_path / "config.json").write_text(json.dumps(saved))
  config = notebook.load_config(str(tmp_path))
  assert sorted(config.eval.tasks) == ["geometry", "joint", "retrieval", "zeroshot"]
  assert config.eval.tasks.zeroshot.to_dict() == default_config.default_tasks()[
      "zeroshot"].to_dict()
  config_lib.validate(config, num_devices=8)
  assert sorted(config_lib.upgrade(saved)["eval"]["tasks"]) == ["geometry", "joint",
                                                                "retrieval", "zeroshot"]
