"""Step timing: the wait for data is measured apart from the step; a bar on a terminal,
none elsewhere."""

import io
import sys
import time

import pytest

from xmodal import progress


def _slow_batches(wait_s):
  while True:
    time.sleep(wait_s)
    yield {}


def test_data_time_is_the_wait_for_the_next_batch():
  """An input-bound loop (50 ms waiting for each batch, 10 ms of work) reports a data time
  of about 50 ms inside a step time of about 60 ms; compilation and evaluation stay out."""
  clock = progress.Clock(0, 8, batch_size=32, bar=False)
  batches = _slow_batches(0.05)
  clock.next(batches)
  time.sleep(0.3)                                 # the first step: compilation
  assert clock.first_step_done() >= 0.35
  for _ in range(6):
    clock.next(batches)
    time.sleep(0.01)                              # the step itself
    clock.step_done()
  time.sleep(0.5)
  clock.exclude(0.5)                              # an evaluation
  t = clock.interval(done=7)
  assert 0.05 <= t["data_time_s"] < t["step_time_s"]
  assert 0.06 <= t["step_time_s"] < 0.06 + 0.2    # first step and evaluation left out
  assert t["steps_per_s"] == pytest.approx(1 / t["step_time_s"])
  assert t["examples_per_s"] == pytest.approx(32 / t["step_time_s"])
  assert t["eta_s"] == pytest.approx(t["step_time_s"])   # one step to go
  clock.close()


class _Terminal(io.StringIO):
  def isatty(self):
    return True


@pytest.mark.parametrize("stream, drawn", [(_Terminal, True), (io.StringIO, False)])
def test_a_bar_on_a_terminal_and_none_elsewhere(monkeypatch, stream, drawn):
  err = stream()
  monkeypatch.setattr(sys, "stderr", err)
  clock = progress.Clock(2, 6, batch_size=8)        # a resumed run: steps 3..6
  clock.next(iter([{}] * 4))
  clock.first_step_done()
  for _ in range(3):
    clock.step_done()
  clock.interval(done=6, loss=1.25)
  clock.close()
  text = err.getvalue()
  if drawn:
    assert "6/6" in text and "step/s" in text and "loss=1.25" in text and "ex_per_s=" in text
  else:
    assert text == ""
