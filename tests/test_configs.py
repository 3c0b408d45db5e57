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
    for name in ("train_manifest", "eval_manifest"):
      (tmp_path / f"{name}.jsonl").write_text('{"image": "a.jpg", "caption": "x"}\n')
      config.data[name] = str(tmp_path / f"{name}.jsonl")
  config_lib.validate(config, num_devices=8)
