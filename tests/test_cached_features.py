"""Projector-only alignment on cached frozen features: cache a trained run's encoder
features once (tools/cache_features.py), then train only MLP projectors on them with the
real loop (data.source="features")."""

import importlib.util
import os
import sys

import numpy as np
import pytest

from xmodal import metrics as metrics_lib, train
from tiny import make_tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))
import cache_features  # noqa: E402


@pytest.mark.slow
def test_projectors_learn_on_cached_features(tmp_path):
  frozen = str(tmp_path / "frozen")
  train.train(make_tiny_config(**{"train.total_steps": 40, "optim.lr": 3e-3}), frozen)
  feats = tmp_path / "feats"
  assert cache_features.main(["--workdir", frozen, "--split", "train", "--max_examples", "512",
                              "--out", str(feats / "train.npz")]) == 0
  assert cache_features.main(["--workdir", frozen, "--split", "eval",
                              "--out", str(feats / "eval.npz")]) == 0
  with np.load(feats / "train.npz") as f:
    assert f["image"].shape == (512, 32) and f["text"].shape == (512, 32)
    assert f["label"].shape == (512,) and f["image"].dtype == np.float32

  spec = importlib.util.spec_from_file_location("card", os.path.join(ROOT, "configs",
                                                                     "projector_cached.py"))
  card = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(card)
  config = card.get_config(str(feats))
  assert config.towers.image.features == 32 and config.towers.text.encoder == "identity"
  config.update_from_flattened_dict({
      "batch_size": 64, "eval.batch_size": 64, "model.embed_dim": 32, "optim.warmup_steps": 5,
      "optim.lr": 3e-3, "train.total_steps": 80, "train.log_every": 10, "train.eval_every": 0,
      "train.checkpoint_every": 40, "towers.image.head_hidden": 64,
      "towers.text.head_hidden": 64})
  workdir = str(tmp_path / "projectors")
  final = train.train(config, workdir)
  losses = [r["loss"] for r in metrics_lib.read_jsonl(workdir) if "loss" in r]
  assert losses[-1] < 0.8 * losses[0], losses
  # 128 eval pairs, 30 colour-shape classes: chance for class-level top-1 is about 1/30.
  assert final["retrieval/image_to_text/class_top1"] > 3 / 30, final
  assert final["retrieval/image_to_text/R10"] > 2 * 10 / 128, final
