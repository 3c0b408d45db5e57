"""Every config file in configs/ loads and validates (manifest paths aside)."""

import glob
import importlib.util
import os

import pytest

from xmodal import config as config_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(ROOT, "configs", "*.py"))))
def test_config_file_validates(path, tmp_path):
  spec = importlib.util.spec_from_file_location("experiment", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config(None)
  if config.data.source == "features":
    import numpy as np
    for name in ("train_files", "eval_files"):
      np.savez(tmp_path / f"{name}.npz", label=np.zeros(4, np.int32),
               **{m: np.zeros((4, t.features), np.float32) for m, t in config.towers.items()})
      config.data[name] = str(tmp_path / f"{name}.npz")
  if config.data.source == "manifest":
    config.data.train_files = config.data.eval_files = ""     # the manifests below instead
    for name in ("train_manifest", "eval_manifest"):
      (tmp_path / f"{name}.jsonl").write_text('{"image": "a.jpg", "caption": "x"}\n')
      config.data[name] = str(tmp_path / f"{name}.jsonl")
  config_lib.validate(config, num_devices=8)


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
