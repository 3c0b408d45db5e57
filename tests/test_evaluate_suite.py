"""Suite files and the results table: one row per task, the DataComp-style average."""

import json
import os

import ml_collections
import pytest

from xmodal.config import ConfigError
from xmodal.evaluate import kinds, suite


def test_a_python_or_json_suite_gives_complete_tasks(tmp_path):
  (tmp_path / "s.py").write_text(
      "import ml_collections\n"
      "def get_config(arg=None):\n"
      "  return ml_collections.ConfigDict(dict(\n"
      "      zs=dict(kind='zeroshot', prompts=arg or 'cifar10'),\n"
      "      coco=dict(kind='retrieval', captions='all', data=dict(eval_source='manifest'))))\n")
  tasks = suite.load(f"{tmp_path / 's.py'}:mnist")
  assert sorted(tasks) == ["coco", "zs"] and tasks.zs.prompts == "mnist"
  assert tasks.zs.ks == (1, 5) and tasks.coco.query_block == 1024     # defaults filled
  (tmp_path / "s.json").write_text(json.dumps({"p": {"kind": "knn", "k": 3}}))
  assert suite.load(str(tmp_path / "s.json")).p.to_dict() == kinds.new("knn", k=3).to_dict()


@pytest.mark.parametrize("body, name, message", [
    ("{}", "e.json", "--suite: "),
    ("{not json", "b.json", "b.json:1: not valid JSON"),
    ('{"a": 3}', "c.json", "task 'a' is 3, expected a task section"),
])
def test_a_bad_suite_file_is_one_config_error(tmp_path, body, name, message):
  (tmp_path / name).write_text(body)
  with pytest.raises(ConfigError, match=message):
    suite.load(str(tmp_path / name))
  with pytest.raises(ConfigError, match="--suite: no such file"):
    suite.load(str(tmp_path / "none.json"))


def test_the_table_averages_the_scored_tasks_overall_and_per_kind(tmp_path):
  tasks = ml_collections.ConfigDict({
      "a": kinds.new("zeroshot"), "b": kinds.new("zeroshot", prompts="cifar10", data=dict(
          eval_source="tfds", tfds_name="cifar10", tfds_eval_split="test")),
      "c": kinds.new("retrieval"), "d": kinds.new("geometry"),
      "e": kinds.new("fewshot")})
  metrics = {"a/top1": 0.5, "a/examples": 10, "b/top1": 0.7, "c/image_to_text/R1": 0.2,
             "c/text_to_image/R1": 0.4, "c/image_to_text/R5": 0.9, "d/image-text/gap": 0.3,
             "e/1shot/top1": 0.1, "e/25shot/top1": 0.6, "e/5shot/top1": 0.3,
             "eval/time_s": 3.0}
  res = suite.results(tasks, metrics, {"a": 1.5}, 100, "mine")
  assert res["tasks"]["c"]["score"] == pytest.approx(0.3)      # mean R@1 of both ways
  assert res["tasks"]["e"]["score"] == 0.6                      # the largest shot count
  assert res["tasks"]["d"]["score"] is None                     # geometry: no score
  assert res["average"] == pytest.approx((0.5 + 0.7 + 0.3 + 0.6) / 4)
  assert res["average_by_kind"] == pytest.approx({"fewshot": 0.6, "retrieval": 0.3,
                                                  "zeroshot": 0.6})
  assert res["tasks"]["b"]["data"] == "tfds cifar10[test]"
  assert res["tasks"]["a"]["data"] == "the run's held-out split"
  paths = suite.write(str(tmp_path / "out"), res)
  table = open(paths["md"]).read()
  assert "| a | zeroshot | the run's held-out split | 0.5000 | 10 | 1.5000 |" in table
  assert "| **average** (4 tasks) | | | **0.5250** | | |" in table
  assert json.load(open(paths["json"]))["tasks"]["c"]["metrics"]["image_to_text/R5"] == 0.9
  assert os.path.getsize(paths["png"]) > 1000
