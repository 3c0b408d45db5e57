"""Step timing and the terminal progress bar of a training run.

`Clock` measures each logging interval: the mean wall time of a step (`step_time_s`) and
how much of it the loop spent waiting for the next batch (`data_time_s`). An input-bound
run shows data_time_s close to step_time_s, a compute-bound one close to 0 (the device
works on step t while the host fetches batch t+1). The first step (compilation) and
evaluations are kept out of both.

On a terminal a tqdm bar (steps, steps/s, examples/s, ETA, the latest loss) sits below the
log lines; when stderr is not a terminal (a log file, a pipe, a batch job) there is no bar
and the log lines carry the same numbers.
"""

import time

import tqdm


class Clock:
  """Timing of the steps [start, total) of a run with `batch_size` examples a step."""

  def __init__(self, start: int, total: int, batch_size: int, bar: bool = True):
    self.total, self.batch_size = total, batch_size
    # disable=None: tqdm draws only when its stream (stderr) is a terminal.
    self._bar = tqdm.tqdm(total=total, initial=start, unit="step", dynamic_ncols=True,
                          disable=None if bar else True, smoothing=0.1)
    self._restart()

  def _restart(self):
    self._start, self._steps, self._data = time.perf_counter(), 0, 0.0

  def next(self, iterator):
    """next(iterator), the wait counted as data time."""
    t = time.perf_counter()
    item = next(iterator)
    self._data += time.perf_counter() - t
    return item

  def first_step_done(self) -> float:
    """Ends the first step (call after blocking on its result); returns its seconds
    (compilation, mostly) and starts the first interval."""
    seconds = time.perf_counter() - self._start
    self._bar.update(1)
    self._restart()
    return seconds

  def step_done(self):
    self._steps += 1
    self._bar.update(1)

  def exclude(self, seconds: float):
    """Keeps `seconds` (an evaluation) out of the current interval."""
    self._start += seconds

  def interval(self, done: int, loss: float | None = None) -> dict:
    """The steps since the last call (or the first step): {step_time_s, data_time_s,
    steps_per_s, examples_per_s, eta_s}; starts the next interval."""
    steps = max(self._steps, 1)
    step_time = max(time.perf_counter() - self._start, 1e-9) / steps
    out = {"step_time_s": step_time, "data_time_s": self._data / steps,
           "steps_per_s": 1.0 / step_time, "examples_per_s": self.batch_size / step_time,
           "eta_s": step_time * (self.total - done)}
    shown = {} if loss is None else {"loss": f"{loss:.4g}"}
    self._bar.set_postfix(**shown, ex_per_s=f"{out['examples_per_s']:.4g}",
                          data=f"{out['data_time_s'] / step_time:.0%}")
    self._restart()
    return out

  def close(self):
    self._bar.close()
