"""Every config file in configs/ loads and validates (manifest paths aside)."""

import glob
import importlib.util
import os
import subprocess
import sys

import pytest

from xmodal import config as config_lib
from tiny import write_converted_weights

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(ROOT, "configs", "*.py"))))
def test_config_file_validates(path, tmp_path):
  spec = importlib.util.spec_from_file_location("experiment", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  # The LiT card needs converted weights (without, it refuses: test below).
  arg = write_converted_weights(tmp_path / "w") if path.endswith("lit_frozen_clip_image.py") \
      else None
  config = module.get_config(arg)
  if config.data.source == "features":
    import numpy as np
    for name in ("train_files", "eval_files"):
      np.savez(tmp_path / f"{name}.npz", label=np.zeros(4, np.int32),
               **{m: np.zeros((4, t.features), np.float32) for m, t in config.towers.items()})
      config.data[name] = str(tmp_path / f"{name}.npz")
  if config.data.source == "manifest":
    for name in ("train_manifest", "eval_manifest"):
      (tmp_path / f"{name}.jsonl").write_text('{"image": "a.jpg", "caption": "x"}\n')
      config.data[name] = str(tmp_path / f"{name}.jsonl")
  config_lib.validate(config, num_devices=8)


def test_lit_card_without_its_weights_is_an_error_naming_the_field(tmp_path):
  """Else it would train a random image tower, frozen."""
  spec = importlib.util.spec_from_file_location(
      "lit", os.path.join(ROOT, "configs", "lit_frozen_clip_image.py"))
  card = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(card)
  for arg in (str(tmp_path / "missing"), str(tmp_path)):   # no folder; no towers.json in it
    with pytest.raises(config_lib.ConfigError,
                       match=r"^config.init.from: the LiT card needs converted CLIP weights, "
                             r"and '.*' has no towers.json; write them with"):
      card.get_config(arg)
  config = card.get_config(write_converted_weights(tmp_path / "w"))
  assert config.init["from"] == str(tmp_path / "w" / "params.safetensors")
  assert config.train.frozen == ("image/.*",) and config.data.image_size == 16


@pytest.mark.slow
def test_lit_card_without_its_weights_stops_the_command_in_one_line(tmp_path):
  result = subprocess.run(
      [sys.executable, "-m", "xmodal.cli", "train",
       f"--config={os.path.join(ROOT, 'configs', 'lit_frozen_clip_image.py')}:{tmp_path / 'w'}",
       f"--workdir={tmp_path / 'run'}"], capture_output=True, text=True, timeout=120)
  assert result.returncode == 2
  assert result.stderr.startswith("xmodal train: error: config.init.from: the LiT card needs")
  assert result.stderr.count("\n") == 1 and not (tmp_path / "run").exists()


def test_clip_card_with_the_bpe_file_fits_openai_text_weights():
  """configs/clip_vit_b16.py:BPE tokenises as open_clip and its text tower has the shapes of
  OpenAI's ViT-B/16 text tower (vocab 49,408 x 512, 77 positions)."""
  import flax.linen
  from xmodal.models import model as model_lib
  spec = importlib.util.find_spec("open_clip")
  if spec is None:
    pytest.skip("open-clip-torch not installed (pip install open-clip-torch --no-deps)")
  bpe = os.path.join(os.path.dirname(spec.origin), "bpe_simple_vocab_16e6.txt.gz")
  card = os.path.join(ROOT, "configs", "clip_vit_b16.py")
  loader = importlib.util.spec_from_file_location("card", card)
  module = importlib.util.module_from_spec(loader)
  loader.loader.exec_module(module)
  config = module.get_config(bpe)
  assert (config.data.tokenizer, config.towers.text.pool) == ("clip", "argmax")
  config_lib.validate(config, num_devices=8)
  shapes = flax.linen.unbox(model_lib.abstract_params(model_lib.MultiTower(config), config))
  text = shapes["text"]["encoder"]
  assert text["token_embed"]["embedding"].shape == (49408, 512)
  assert text["pos_embed"].shape == (1, 77, 512)
