"""Orbax checkpoints: train state, data-iterator position and run metadata, saved together.

Layout: `{workdir}/checkpoints/{step}/` with items
  state  the train state pytree {params, opt_state, step} (StandardSave: every process
         writes its shards, restores onto any mesh given a target with shardings);
  data   the grain iterator state (one small JSON per process);
  meta   JSON: {"step", "skipped": bad rows dropped so far (all processes),
         "skipped_steps": non-finite steps skipped so far, "process_count", "num_workers",
         "examples_consumed": global stream position}.
Saves are asynchronous (training goes on while files are written), every
`train.checkpoint_every` steps and at the end; the newest `train.keep_checkpoints` are kept.

Faults (a run must lose nothing and never stop with a traceback for them):
- a save that cannot be written (disk full, quota, permissions) raises `CheckpointError`
  with one line naming the path and the free space there, from the next `save` or `wait`
  (the write is asynchronous); the checkpoints written before are intact, and the next
  start resumes from the newest of them;
- Orbax writes each save into `{step}.orbax-checkpoint-tmp*` and renames it when complete,
  so a save interrupted by a kill leaves only such a folder: the next start removes it
  (Orbax's `cleanup_tmp_directories`) and says so;
- `restore_newest` tries the checkpoints newest first; one that does not restore (zero-filled
  or missing array files, a missing item, an empty step folder, ...) is reported in one line
  and the next older one is tried. Once one restores, the damaged newer ones are moved to
  `{workdir}/damaged_checkpoints/` (kept for inspection, and out of the way of the saves
  that will reach their steps again); if none restores, nothing is moved and
  `CheckpointError` lists every checkpoint tried, one line each.
"""

import logging
import os
import re
import shutil
import sys
import traceback

import grain
import jax
import orbax.checkpoint as ocp

from xmodal import parallel
from xmodal.config import WorkdirError

# What a damaged checkpoint raises on restore, as observed with orbax 0.12 / tensorstore
# 0.1: ValueError (tensorstore DATA_LOSS / NOT_FOUND / OUT_OF_RANGE, bad JSON), KeyError (a
# missing item), OSError (a missing file). A save that cannot write raises ValueError
# (tensorstore RESOURCE_EXHAUSTED) or OSError.
DAMAGE_ERRORS = (ValueError, KeyError, OSError)
WRITE_ERRORS = (ValueError, OSError)


class CheckpointError(Exception):
  """A checkpoint could not be written, or no checkpoint of the run restores."""


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), "checkpoints")


class Checkpointer:
  def __init__(self, workdir: str, keep: int = 2, async_save: bool = True):
    self.directory = checkpoint_dir(workdir)
    self.damaged_directory = os.path.join(os.path.abspath(workdir), "damaged_checkpoints")
    _quiet_orbax_tracebacks()
    unfinished = _unfinished_saves(self.directory) if jax.process_index() == 0 else []
    # create=False: the directory appears with the first save, so a start that fails
    # before it leaves the workdir as it was.
    self.manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=keep,
                                             enable_async_checkpointing=async_save,
                                             cleanup_tmp_directories=True, create=False))
    for name in unfinished:
      _say(f"removed {os.path.join(self.directory, name)}: an unfinished save of an "
           f"interrupted run")

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state, data_iterator, meta: dict, force: bool = False) -> bool:
    """Starts an async save; returns False if the manager skipped it. Raises
    CheckpointError if this save, or the previous one still being written, fails."""
    try:
      return self.manager.save(step, force=force, args=ocp.args.Composite(
          state=ocp.args.StandardSave(state),
          data=grain.checkpoint.CheckpointSave(data_iterator),
          meta=ocp.args.JsonSave(meta)))
    except WRITE_ERRORS as e:
      raise CheckpointError(self._write_failed(e)) from e

  def read_meta(self, step: int) -> dict:
    return self.manager.restore(step, args=ocp.args.Composite(
        meta=ocp.args.JsonRestore())).meta

  def restore(self, step: int, abstract_state, data_iterator=None):
    """abstract_state: a pytree of jax.ShapeDtypeStruct with the target shardings (any mesh,
    any process count). Returns the state; if `data_iterator` is given, sets it to its saved
    position in place (same process count and workers only)."""
    items = {"state": ocp.args.StandardRestore(abstract_state)}
    if data_iterator is not None:
      items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
    return self.manager.restore(step, args=ocp.args.Composite(**items)).state

  def restore_newest(self, try_restore):
    """try_restore(step) -> anything; it raises (DAMAGE_ERRORS) when the checkpoint is
    damaged. Tries every checkpoint newest first and returns (step, its result), or (None,
    None) when there is no checkpoint. Every process must call it: a checkpoint counts as
    restored only if it restored on every process."""
    _ignore_closed_loop_noise()
    failed = []
    for step in sorted(self.manager.all_steps(), reverse=True):
      error = None
      try:
        result = try_restore(step)
      except DAMAGE_ERRORS as e:
        error = e
      # A process that fails inside Orbax's restore skips its closing barrier; the others
      # wait there until Orbax's barrier timeout, then fail too and meet here.
      if parallel.sum_over_processes(error is not None) == 0:
        self._move_aside(failed)
        return step, result
      reason = _one_line(error) if error is not None else "did not restore on another process"
      failed.append((step, reason))
      _say(f"checkpoint {os.path.join(self.directory, str(step))} does not restore "
           f"({reason}); trying the next older one")
    if failed:
      lines = "\n".join(f"  {os.path.join(self.directory, str(s))}: {r}" for s, r in failed)
      raise CheckpointError(f"no checkpoint of this run restores (nothing was moved or "
                            f"deleted):\n{lines}")
    return None, None

  def _move_aside(self, failed) -> None:
    """Moves damaged checkpoints (newer than the one that restored) out of Orbax's folder:
    kept, but no longer in the way of the saves that will reach their steps again, nor
    counted by keep_checkpoints."""
    if not failed:
      return
    if jax.process_index() == 0:
      os.makedirs(self.damaged_directory, exist_ok=True)
      for step, _ in failed:
        target = os.path.join(self.damaged_directory, str(step))
        n = 1
        while os.path.exists(target):
          target, n = os.path.join(self.damaged_directory, f"{step}.{n}"), n + 1
        os.rename(os.path.join(self.directory, str(step)), target)
        _say(f"moved the damaged checkpoint {step} to {target}")
    parallel.sum_over_processes(0)      # a barrier: every process sees the moves
    self.manager.reload()

  def wait(self):
    """Blocks until the save underway is written; CheckpointError if it failed."""
    try:
      self.manager.wait_until_finished()
    except WRITE_ERRORS as e:
      raise CheckpointError(self._write_failed(e)) from e

  def close(self):
    self.wait()
    self.manager.close()

  def _write_failed(self, error) -> str:
    path = _error_path(error) or self.directory
    saving = re.search(r"(\d+)\.orbax-checkpoint-tmp", path)
    if saving:                        # the checkpoint being written, not one of its files
      path = os.path.join(self.directory, saving.group(1))
    self.manager.reload()
    newest = self.manager.latest_step()
    return (f"could not write the checkpoint {path} ({free_space(path)}): "
            f"{_one_line(error, 200)}; training stopped; the next start resumes from "
            + (f"step {newest}" if newest is not None else "the beginning"))


def _say(line: str) -> None:
  if jax.process_index() == 0:
    print(line, flush=True)


def free_space(path: str) -> str:
  """"1.2 MB free of 3.1 MB there": the file system holding `path` (or its nearest existing
  parent)."""
  path = os.path.abspath(path)
  while not os.path.exists(path) and os.path.dirname(path) != path:
    path = os.path.dirname(path)
  try:
    usage = shutil.disk_usage(path)
  except OSError:
    return "free space unknown"
  return f"{_size(usage.free)} free of {_size(usage.total)} there"


def _size(n: int) -> str:
  return f"{n / 1e9:.1f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB"


def _error_path(error) -> str | None:
  """The file an error is about: OSError.filename, or the path tensorstore names."""
  if isinstance(error, OSError) and error.filename:
    return str(error.filename)
  match = re.search(r'(?:local file|Failed writing:) "([^"]+)"', str(error))
  return match.group(1) if match else None


def _one_line(error, limit: int = 300) -> str:
  text = " ".join(str(error).split()) or type(error).__name__
  if isinstance(error, KeyError):
    text = text.strip("'\"")
  return text if len(text) <= limit else text[:limit] + "..."


def _unfinished_saves(directory: str) -> list[str]:
  """Names of the temporary folders of saves that never completed."""
  if not os.path.isdir(directory):
    return []
  return sorted(n for n in os.listdir(directory) if ".orbax-checkpoint-tmp" in n)


class _DropOrbaxTracebacks(logging.Filter):
  """Orbax logs every failed background save with its traceback and then raises the same
  error to the caller, where CheckpointError reports it in one line; the write tasks it
  abandons are logged again by asyncio when collected (together some 300 lines for one
  full disk). Drops only error records with a traceback from Orbax's code or about Orbax's
  tasks; keeps everything else."""

  def filter(self, record):
    if record.levelno < logging.ERROR or not record.exc_info:
      return True
    orbax = f"{os.sep}orbax{os.sep}"
    if orbax in record.pathname or orbax in record.getMessage():
      return False
    # asyncio's "_GatheringFuture exception was never retrieved" names no Orbax code in its
    # message; the exception's own traceback does.
    tb = record.exc_info[2] if len(record.exc_info) > 2 else None
    return not any(orbax in frame.filename for frame in traceback.extract_tb(tb))


_FILTER = _DropOrbaxTracebacks()


def _quiet_orbax_tracebacks() -> None:
  # Orbax logs through absl.logging ("absl"); abandoned tasks are reported by "asyncio".
  for logger in (logging.getLogger("absl"), logging.getLogger("asyncio")):
    if _FILTER not in logger.filters:
      logger.addFilter(_FILTER)


def _ignore_closed_loop_noise() -> None:
  """After a restore fails, tensorstore still completes the reads already under way and
  calls back into the asyncio loop Orbax has closed; each callback prints a traceback
  ("Event loop is closed") through sys.unraisablehook. Those are harmless: drop them."""
  previous = sys.unraisablehook
  if getattr(previous, "_xmodal", False):
    return

  def hook(unraisable):
    if not (isinstance(unraisable.exc_value, RuntimeError)
            and str(unraisable.exc_value) == "Event loop is closed"):
      previous(unraisable)

  hook._xmodal = True
  sys.unraisablehook = hook


def restore_params(workdir: str, abstract_params, step: int | None = None):
  """Only the params of a checkpoint (no optimizer state), onto the shardings given in
  `abstract_params` (a pytree of jax.ShapeDtypeStruct). Returns (params, step). With
  `step=None`, the newest checkpoint whose params restore (a damaged newer one is reported
  in one line and skipped)."""
  manager = ocp.CheckpointManager(checkpoint_dir(workdir),
                                  item_handlers={"state": ocp.PyTreeCheckpointHandler()})
  all_steps = manager.all_steps()
  if not all_steps:
    raise WorkdirError(f"no checkpoint under {checkpoint_dir(workdir)}")
  if step is not None and step not in all_steps:
    raise WorkdirError(f"no checkpoint of step {step} under {checkpoint_dir(workdir)}; "
                       f"steps: {', '.join(map(str, sorted(all_steps)))}")
  steps = sorted(all_steps, reverse=True) if step is None else [step]
  target = {"params": abstract_params}
  restore_args = ocp.checkpoint_utils.construct_restore_args(target)
  _ignore_closed_loop_noise()
  try:
    for i, s in enumerate(steps):
      try:
        restored = manager.restore(s, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
            item=target, restore_args=restore_args, partial_restore=True)))
        return restored.state["params"], s
      except DAMAGE_ERRORS as e:
        if step is not None or i == len(steps) - 1:
          raise CheckpointError(f"{os.path.join(checkpoint_dir(workdir), str(s))}: does not "
                                f"restore ({_one_line(e)})") from e
        _say(f"checkpoint {os.path.join(checkpoint_dir(workdir), str(s))} does not restore "
             f"({_one_line(e)}); trying the next older one")
  finally:
    manager.close()
