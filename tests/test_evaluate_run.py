"""`xmodal eval` with tasks: a suite file on a checkpoint writes the results table; one-line
errors for bad suites and refused fields; the notebook runs one task the same way."""

import json
import os

import pytest

from xmodal import cli, metrics as metrics_lib
from tiny import make_tiny_config


def _workdir(tmp_path):
  """A workdir with a run's config.json (enough for the checks before any checkpoint)."""
  workdir = tmp_path / "run"
  workdir.mkdir()
  (workdir / "config.json").write_text(make_tiny_config().to_json())
  return str(workdir)


@pytest.mark.parametrize("suite, args, message", [
    (None, ["--suite=nothing.json"], "xmodal eval: error: --suite: no such file 'nothing.json'"),
    ({"p": {"kind": "knn", "k": 0}}, [], "xmodal eval: error: config.eval.tasks.p.k: must be "
                                         "> 0, got 0"),
    ({"p": {"kind": "knn"}}, ["--config.eval.tasks.p.kk=3"], "config.eval.tasks.p.kk: unknown "
                                                             "key; did you mean "
                                                             "config.eval.tasks.p.k?"),
    ({"p": {"kind": "knn"}}, ["--config.eval.tasks.p.k=0"], "config.eval.tasks.p.k: must be > 0"),
])
def test_a_bad_suite_or_task_override_is_one_line_and_exit_2(tmp_path, capsys, suite, args,
                                                             message):
  workdir = _workdir(tmp_path)
  if suite is not None:
    (tmp_path / "s.json").write_text(json.dumps(suite))
    args = [f"--suite={tmp_path / 's.json'}", *args]
  code = cli.main(["xmodal", "eval", f"--workdir={workdir}", *args])
  err = capsys.readouterr().err
  assert code == 2 and message in err and err.count("\n") == 1, err


def test_embed_may_change_the_data_it_reads_but_not_the_model(tmp_path, capsys):
  workdir = _workdir(tmp_path)
  code = cli.main(["xmodal", "embed", f"--workdir={workdir}", f"--out={tmp_path / 'e'}",
                   "--config.data.image_size=64"])
  err = capsys.readouterr().err
  assert code == 2 and err.startswith("xmodal embed: error: config.data.image_size: would "
                                      "change the model the run trained; `xmodal embed` "
                                      "takes only eval.*"), err
  code = cli.main(["xmodal", "embed", f"--workdir={workdir}", f"--out={tmp_path / 'e'}",
                   "--config.data.train_files=/no/such/*.tar", "--config.data.source="
                   "webdataset"])
  err = capsys.readouterr().err
  assert code == 2 and "config.data.train_files: no file matches" in err, err


@pytest.mark.slow
def test_a_suite_on_a_checkpoint_writes_the_table_and_the_notebook_agrees(tmp_path, capsys):
  import xmodal
  from xmodal import train
  workdir = str(tmp_path / "run")
  train.train(make_tiny_config(**{"train.total_steps": 4, "optim.warmup_steps": 1}), workdir)
  (tmp_path / "suite.json").write_text(json.dumps({
      "zs7": {"kind": "zeroshot", "templates": "openai_imagenet_7"},
      "probe": {"kind": "knn", "k": 5, "train_examples": 64},
      "few": {"kind": "fewshot", "shots": [1, 2], "train_examples": 90},
      "geo": {"kind": "geometry", "max_examples": 50}}))
  assert cli.main(["xmodal", "eval", f"--workdir={workdir}",
                   f"--suite={tmp_path / 'suite.json'}", "--config.eval.tasks.probe.k=3"]) == 0
  out = os.path.join(workdir, "suites", "suite_step4")
  assert "results: " + os.path.join(out, "results.md") in capsys.readouterr().out
  res = json.load(open(os.path.join(out, "results.json")))
  row = [r for r in metrics_lib.read_jsonl(workdir) if r.get("run") == "eval_step4"][-1]
  assert sorted(res["tasks"]) == ["few", "geo", "probe", "zs7"]
  assert res["tasks"]["probe"]["metrics"]["top1"] == row["probe/top1"]
  assert res["tasks"]["few"]["score"] == row["few/2shot/top1"]
  assert res["average"] == pytest.approx(
      (row["zs7/top1"] + row["probe/top1"] + row["few/2shot/top1"]) / 3)
  assert "| **average** (3 tasks) |" in open(os.path.join(out, "results.md")).read()
  assert os.path.getsize(os.path.join(out, "results.png")) > 1000
  # The notebook: one task, plain dict, the same numbers as the suite's run.
  m = xmodal.load(workdir)
  assert m.evaluate("knn", k=3, train_examples=64) == pytest.approx(
      res["tasks"]["probe"]["metrics"])
  assert m.evaluate({"kind": "zeroshot", "templates": "openai_imagenet_7"})["top1"] == (
      row["zs7/top1"])
