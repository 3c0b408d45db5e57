"""SIGINT and SIGTERM: stop at the end of the current step, with a checkpoint.

SIGTERM is how SLURM, Kubernetes and Cloud TPU VMs announce a preemption; SIGINT is Ctrl-C.
The first one sets a flag and prints one line; the train loop finishes the step underway,
saves a checkpoint at it (data-iterator position included) and raises `Interrupted`, which
`xmodal train` reports in one line before exiting with 128 + the signal number. The next
`xmodal train` on the workdir resumes from that checkpoint, exactly as if nothing happened.
A second SIGINT or SIGTERM aborts at once (the default action of the signal: nothing more
is saved; the newest complete checkpoint stays, and the unfinished save's temporary folder is
removed by the next start).

With several processes each one may see the signal at a different step, and a checkpoint is
a collective write, so they agree first: `stop_now` sums the flag over processes at the
loop's existing sync points (log and checkpoint steps), and every process stops at the same
one. A single process stops after the current step.
"""

import os
import signal
import sys
import threading

import jax

from xmodal import parallel

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(Exception):
  """The run stopped on a signal after saving a checkpoint at `step`."""

  def __init__(self, signum: int | None, step: int, path: str):
    """signum: the signal this process received (None: only another process did)."""
    self.signum, self.step, self.path = signum, step, path
    cause = signal.Signals(signum).name if signum else "a signal to another process"
    super().__init__(f"stopped by {cause} after step {step}; saved "
                     f"the checkpoint {path}; the next `xmodal train` on this workdir "
                     f"resumes there")

  def exit_code(self) -> int:
    """128 + the signal number, as a shell reports a process the signal ended."""
    return 128 + int(self.signum or signal.SIGTERM)


class StopOnSignal:
  """Context manager: while active, the first SIGINT/SIGTERM only sets `signum`. Does
  nothing outside the main thread (Python delivers signals only there)."""

  def __init__(self):
    self.signum = None
    self._previous = {}

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      for s in SIGNALS:
        self._previous[s] = signal.signal(s, self._handle)
    return self

  def __exit__(self, *exc):
    for s, handler in self._previous.items():
      signal.signal(s, handler)
    self._previous = {}
    return False

  def _handle(self, signum, frame):
    name = signal.Signals(signum).name
    if self.signum is not None:        # the second one: abort now, as if no handler existed
      print(f"{name} again: aborting now without saving", file=sys.stderr, flush=True)
      for s in SIGNALS:
        signal.signal(s, signal.SIG_DFL)
      os.kill(os.getpid(), signum)
      return
    self.signum = signum
    print(f"{name}: stopping after the current step and saving a checkpoint "
          f"({name} again aborts at once)", file=sys.stderr, flush=True)

  def stop_now(self, sync_point: bool) -> bool:
    """True when the loop should save and stop after this step. With several processes,
    only at sync points (every process calls it with the same `sync_point`)."""
    if jax.process_count() == 1:
      return self.signum is not None
    if not sync_point:
      return False
    return parallel.sum_over_processes(int(self.signum is not None)) > 0
