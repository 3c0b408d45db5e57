"""metrics.jsonl survives a kill during a write: a torn last line is ignored with a warning,
and the next writer starts on a line of its own."""

import json
import logging
import os

from xmodal import metrics as metrics_lib


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
