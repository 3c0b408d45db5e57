"""tools/prepare_eval_data.py: class folders and caption files become manifests that
evaluation tasks read as they are."""

import importlib.util
import json
import os

import ml_collections
import numpy as np

from xmodal import config as config_lib
from xmodal.evaluate import data as data_lib, kinds
from tiny import make_tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
spec = importlib.util.spec_from_file_location(
    "prepare_eval_data", os.path.join(ROOT, "tools", "prepare_eval_data.py"))
tool = importlib.util.module_from_spec(spec)
spec.loader.exec_module(tool)


def _png(path, value):
  from PIL import Image
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(np.full((8, 8, 3), value, np.uint8)).save(path)


def test_class_folders_give_labels_in_sorted_order_and_a_names_file(tmp_path):
  for i, cls in enumerate(["n02", "n01", "n03"]):
    for j in range(2):
      _png(tmp_path / "val" / cls / f"{j}.png", 40 * i + j)
  (tmp_path / "names.txt").write_text("goldfish\ntench\nshark\n")
  out = str(tmp_path / "val.jsonl")
  assert tool.main(["folder", str(tmp_path / "val"), "--out", out,
                    "--names", str(tmp_path / "names.txt")]) == 0
  rows = [json.loads(line) for line in open(out)]
  assert [(r["image"], r["label"], r["caption"]) for r in rows[:3]] == [
      ("val/n01/0.png", 0, "goldfish"), ("val/n01/1.png", 0, "goldfish"),
      ("val/n02/0.png", 1, "tench")]
  assert open(out + ".classnames.txt").read() == "goldfish\ntench\nshark\n"
  # A zero-shot task reads it as prepared.
  config = make_tiny_config()
  with config.unlocked():
    config.eval.tasks = ml_collections.ConfigDict({"val": kinds.new(
        "zeroshot", classnames=out + ".classnames.txt",
        data=dict(eval_source="manifest", eval_files=out))})
  config_lib.validate(config, 8)
  chunk = data_lib.Reader(data_lib.task_config(config, config.eval.tasks.val), "eval").read(
      np.arange(6), ("image",))
  assert chunk.skipped == 0 and chunk.rows["label"].tolist() == [0, 0, 1, 1, 2, 2]


def test_karpathy_and_coco_caption_files_give_every_caption_per_image(tmp_path):
  _png(tmp_path / "imgs" / "val2014" / "a.jpg", 1)
  _png(tmp_path / "imgs" / "val2014" / "b.jpg", 2)
  karpathy = {"images": [
      {"filepath": "val2014", "filename": "a.jpg", "split": "test",
       "sentences": [{"raw": "a cat. "}, {"raw": "one cat"}]},
      {"filepath": "val2014", "filename": "b.jpg", "split": "train",
       "sentences": [{"raw": "a dog"}]}]}
  (tmp_path / "k.json").write_text(json.dumps(karpathy))
  out = str(tmp_path / "k.jsonl")
  tool.main(["captions", str(tmp_path / "k.json"), "--images", str(tmp_path / "imgs"),
             "--out", out])
  assert [json.loads(line) for line in open(out)] == [
      {"image": "imgs/val2014/a.jpg", "caption": ["a cat.", "one cat"]}]
  coco = {"images": [{"id": 7, "file_name": "val2014/b.jpg"}],
          "annotations": [{"image_id": 7, "caption": "a dog"}, {"image_id": 7, "caption": "x"}]}
  (tmp_path / "c.json").write_text(json.dumps(coco))
  tool.main(["captions", str(tmp_path / "c.json"), "--images", str(tmp_path / "imgs"),
             "--out", out])
  assert [json.loads(line) for line in open(out)] == [
      {"image": "imgs/val2014/b.jpg", "caption": ["a dog", "x"]}]
