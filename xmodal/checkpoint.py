"""Orbax checkpoints: train state, data-iterator position and run metadata, saved together.

Layout: `{workdir}/checkpoints/{step}/` with items
  state  the train state pytree {params, opt_state, step} (StandardSave: every process
         writes its shards, restores onto any mesh given a target with shardings);
  data   the grain iterator state (one small JSON per process);
  meta   JSON: {"step", "skipped": bad rows dropped so far (all processes),
         "process_count", "num_workers", "examples_consumed": global stream position}.
Saves are asynchronous (training goes on while files are written), every
`train.checkpoint_every` steps and at the end; the newest `train.keep_checkpoints` are kept.
"""

import os

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp

from xmodal.config import WorkdirError


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), "checkpoints")


class Checkpointer:
  def __init__(self, workdir: str, keep: int = 2, async_save: bool = True):
    # create=False: the directory appears with the first save, so a start that fails
    # before it leaves the workdir as it was.
    self.manager = ocp.CheckpointManager(
        checkpoint_dir(workdir),
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=False,
                                             enable_async_checkpointing=async_save))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state, data_iterator, meta: dict, force: bool = False) -> bool:
    """Starts an async save; returns False if the manager skipped it."""
    return self.manager.save(step, force=force, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        data=grain.checkpoint.CheckpointSave(data_iterator),
        meta=ocp.args.JsonSave(meta)))

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

  def wait(self):
    self.manager.wait_until_finished()

  def close(self):
    self.manager.close()


def restore_params(workdir: str, abstract_params, step: int | None = None):
  """Only the params of a checkpoint (no optimizer state), onto the shardings given in
  `abstract_params` (a pytree of jax.ShapeDtypeStruct). Returns (params, step)."""
  manager = ocp.CheckpointManager(checkpoint_dir(workdir),
                                  item_handlers={"state": ocp.PyTreeCheckpointHandler()})
  steps = manager.all_steps()
  if not steps:
    raise WorkdirError(f"no checkpoint under {checkpoint_dir(workdir)}")
  step = max(steps) if step is None else step
  if step not in steps:
    raise WorkdirError(f"no checkpoint of step {step} under {checkpoint_dir(workdir)}; "
                       f"steps: {', '.join(map(str, sorted(steps)))}")
  target = {"params": abstract_params}
  restore_args = ocp.checkpoint_utils.construct_restore_args(target)
  restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
      item=target, restore_args=restore_args, partial_restore=True)))
  manager.close()
  return restored.state["params"], step
