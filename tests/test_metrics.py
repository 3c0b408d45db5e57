"""Metrics: TensorBoard shows the names as written, old runs' rows read under today's
names, a run of its own keeps an ad-hoc evaluation from hiding the run's history, and a
torn last line (a kill during a write) is ignored with a warning and appended after."""

import json
import logging
import os
import subprocess
import sys
import time
import tomllib
import urllib.parse
import urllib.request

import pytest
from tensorboard.backend.event_processing import event_accumulator

from xmodal import metrics as metrics_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tensorboard(path) -> dict:
  """{tag: [steps]} as TensorBoard's own reader loads the event files of one run folder."""
  acc = event_accumulator.EventAccumulator(str(path))
  acc.Reload()
  return {tag: [e.step for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_tensorboard_shows_every_name_as_written(tmp_path):
  names = {"loss/image-text": 1.0, "retrieval/image_to_text/R1": 0.5,
           "retrieval/text_to_image/class_top1": 0.25, "zeroshot/top1": 0.5,
           "data/skipped": 0, "eval/time_s": 1.5}
  writer = metrics_lib.MetricWriter(str(tmp_path))
  writer.write(10, names)
  writer.close()
  assert _tensorboard(tmp_path / "tensorboard") == {k: [10] for k in names}
  with pytest.raises(ValueError, match=r"retrieval/image->text/R@1.*renamed by TensorBoard"):
    metrics_lib.MetricWriter(str(tmp_path)).write(10, {"retrieval/image->text/R@1": 0.5})


def test_nothing_is_created_before_the_first_write(tmp_path):
  writer = metrics_lib.MetricWriter(str(tmp_path / "run"))
  writer.close()
  assert not (tmp_path / "run").exists()


def test_rows_of_older_runs_read_under_todays_names(tmp_path):
  with open(tmp_path / "metrics.jsonl", "w") as f:
    f.write(json.dumps({"step": 5, "loss": 2.0, "loss/image:text": 2.0}) + "\n")
    f.write(json.dumps({"step": 5, "retrieval/image->text/R@10": 0.5,
                        "retrieval/audio->text/class_top1": 0.75, "zeroshot/top1": 0.1}) + "\n")
  assert metrics_lib.read_jsonl(str(tmp_path)) == [
      {"step": 5, "loss": 2.0, "loss/image-text": 2.0},
      {"step": 5, "retrieval/image_to_text/R10": 0.5,
       "retrieval/audio_to_text/class_top1": 0.75, "zeroshot/top1": 0.1}]


def test_an_earlier_step_in_its_own_run_leaves_the_history_whole(tmp_path):
  """TensorBoard drops a run's points past a step that comes again lower in the same run;
  an ad-hoc evaluation of step 40 after a run that ended at 80 goes to its own run."""
  run = metrics_lib.MetricWriter(str(tmp_path))
  for step in (40, 80):
    run.write(step, {"zeroshot/top1": step / 100})
  run.close()
  adhoc = metrics_lib.MetricWriter(str(tmp_path), run="eval_step40")
  adhoc.write(40, {"zeroshot/top1": 0.33})
  adhoc.close()
  assert _tensorboard(tmp_path / "tensorboard") == {"zeroshot/top1": [40, 80]}
  assert _tensorboard(tmp_path / "tensorboard" / "eval_step40") == {"zeroshot/top1": [40]}
  rows = metrics_lib.read_jsonl(str(tmp_path))
  assert [r.get("run") for r in rows] == [None, None, "eval_step40"]


def test_the_install_brings_the_tensorboard_viewer_and_the_progress_bar():
  with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
    deps = tomllib.load(f)["project"]["dependencies"]
  names = {d.split(">")[0].split("=")[0].split("[")[0].strip() for d in deps}
  assert {"tensorboard", "tensorboardX", "tqdm"} <= names


def _tensorboard_server(logdir, expected_runs, timeout=90) -> dict:
  """{run: {tag: [steps]}} as the TensorBoard program (its Rust data server, the default
  loader) serves them over HTTP once it has loaded `expected_runs`."""
  import portpicker
  port = portpicker.pick_unused_port()
  proc = subprocess.Popen([sys.executable, "-m", "tensorboard.main", f"--logdir={logdir}",
                           f"--port={port}", "--load_fast=true", "--reload_interval=1"],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

  def get(path):
    with urllib.request.urlopen(f"http://localhost:{port}{path}", timeout=10) as r:
      return json.loads(r.read())

  try:
    deadline = time.time() + timeout
    while True:
      try:
        tags = get("/data/plugin/scalars/tags")
        if set(tags) >= set(expected_runs):
          time.sleep(2)                # one more reload: every file of every run read
          tags = get("/data/plugin/scalars/tags")
          break
      except OSError:
        pass
      assert time.time() < deadline, "TensorBoard did not load the runs"
      time.sleep(0.5)
    out = {}
    for run, run_tags in tags.items():
      for tag in run_tags:
        query = urllib.parse.urlencode({"run": run, "tag": tag})
        out.setdefault(run, {})[tag] = [step for _, step, _ in
                                        get(f"/data/plugin/scalars/scalars?{query}")]
    return out
  finally:
    proc.terminate()
    proc.wait(timeout=30)


@pytest.mark.slow
def test_tensorboard_itself_shows_the_names_and_the_whole_history(tmp_path):
  """The real viewer: names as written; an evaluation of step 40 after a run that ended at
  80 keeps the run's own points, where the same write into the run's folder loses them."""
  for logdir, run in ((tmp_path / "apart", "eval_step40"), (tmp_path / "same", None)):
    writer = metrics_lib.MetricWriter(str(logdir))
    for step in (40, 80):
      writer.write(step, {"zeroshot/top1": step / 100, "retrieval/image_to_text/R1": 0.5})
    writer.close()
    time.sleep(1.1)                    # tensorboardX names event files by the second
    adhoc = metrics_lib.MetricWriter(str(logdir), run=run)
    adhoc.write(40, {"zeroshot/top1": 0.33})
    adhoc.close()
  apart = _tensorboard_server(tmp_path / "apart" / "tensorboard", [".", "eval_step40"])
  assert apart == {".": {"zeroshot/top1": [40, 80], "retrieval/image_to_text/R1": [40, 80]},
                   "eval_step40": {"zeroshot/top1": [40]}}
  same = _tensorboard_server(tmp_path / "same" / "tensorboard", ["."])
  assert same["."]["zeroshot/top1"] == [40]      # step 80 dropped: why evaluations go apart



def test_torn_last_line_is_ignored_with_a_warning_and_appended_after(tmp_path, caplog):
  workdir = str(tmp_path)
  writer = metrics_lib.MetricWriter(workdir)
  for step in (1, 2, 3):
    writer.write(step, {"loss": 4.0 - step})
  writer.close()
  path = os.path.join(workdir, "metrics.jsonl")
  with open(path, "a") as f:
    f.write('{"step": 4, "time": 1.0, "lo')      # what a kill inside write() leaves
  with caplog.at_level(logging.WARNING):
    rows = metrics_lib.read_jsonl(workdir)
  assert [r["step"] for r in rows] == [1, 2, 3]
  assert any("metrics.jsonl:4: ignored a torn line" in r.getMessage() for r in caplog.records)

  writer = metrics_lib.MetricWriter(workdir)       # the resumed run
  writer.write(4, {"loss": 0.5})
  writer.close()
  rows = metrics_lib.read_jsonl(workdir)
  assert [(r["step"], r["loss"]) for r in rows] == [(1, 3.0), (2, 2.0), (3, 1.0), (4, 0.5)]
  with open(path) as f:
    lines = f.read().splitlines()
  assert lines[3].startswith('{"step": 4, "time": 1.0, "lo') and json.loads(lines[4])["step"] == 4
  assert metrics_lib.plot_loss_curve(workdir) is not None
