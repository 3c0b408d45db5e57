"""Checkpoint faults (xmodal/checkpoint.py): a damaged newest checkpoint is reported in one
line and the next older one restores (state and data position), the damaged one is kept
aside; when none restores, one line per checkpoint and nothing moved; an interrupted save's
temporary folder is removed on start, the user's files are not."""

import glob
import os
import shutil

import grain
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from xmodal import checkpoint


def _iterator():
  return iter(grain.MapDataset.range(1000).to_iter_dataset())


def _state(step):
  return {"params": {"w": jnp.full((64, 64), float(step)), "b": jnp.arange(8.0) + step},
          "step": jnp.int32(step)}


def _abstract():
  return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding),
                      _state(0))


@pytest.fixture
def workdir(tmp_path):
  """Checkpoints 1, 2, 3 of a run whose data iterator advanced 10 elements per step, and a
  file of the user's beside them."""
  ckpt = checkpoint.Checkpointer(str(tmp_path), keep=3)
  it = _iterator()
  for step in (1, 2, 3):
    for _ in range(10):
      next(it)
    ckpt.save(step, _state(step), it, {"step": step})
  ckpt.close()
  with open(tmp_path / "checkpoints" / "notes.txt", "w") as f:
    f.write("mine")
  return str(tmp_path)


def _restore(workdir):
  ckpt = checkpoint.Checkpointer(workdir, keep=3)

  def attempt(step):
    meta = ckpt.read_meta(step)
    it = _iterator()
    state = ckpt.restore(step, _abstract(), it)
    return meta, state, next(it)

  try:
    return ckpt.restore_newest(attempt)
  finally:
    ckpt.close()


def _arrays(step_dir):
  return [f for f in glob.glob(os.path.join(step_dir, "state", "**", "d", "*"), recursive=True)
          if os.path.isfile(f)]


def _zero_fill(step_dir):
  for f in _arrays(step_dir):
    size = os.path.getsize(f)
    with open(f, "wb") as fh:
      fh.write(b"\0" * size)


DAMAGE = {
    "zero-filled arrays": _zero_fill,
    "missing arrays": lambda d: [os.remove(f) for f in _arrays(d)],
    "truncated arrays": lambda d: [os.truncate(f, os.path.getsize(f) // 2) for f in _arrays(d)],
    "no state item": lambda d: shutil.rmtree(os.path.join(d, "state")),
    "no data item": lambda d: shutil.rmtree(os.path.join(d, "data")),
    "torn meta": lambda d: open(os.path.join(d, "meta", "metadata"), "w").write('{"st'),
}


@pytest.mark.parametrize("how", list(DAMAGE) + ["empty newer folder"])
def test_damaged_newest_checkpoint_falls_back_to_the_previous_one(workdir, how, capsys):
  folder = os.path.join(workdir, "checkpoints")
  if how == "empty newer folder":
    os.makedirs(os.path.join(folder, "7"))
    bad, good = 7, 3
  else:
    DAMAGE[how](os.path.join(folder, "3"))
    bad, good = 3, 2
  step, (meta, state, next_element) = _restore(workdir)
  assert step == good and meta == {"step": good}
  np.testing.assert_array_equal(state["params"]["w"], np.full((64, 64), float(good)))
  assert int(state["step"]) == good
  assert next_element == 10 * good              # the data position of that checkpoint
  said = [line for line in capsys.readouterr().out.splitlines() if line.strip()]
  assert len(said) == 2, said
  assert said[0].startswith(f"checkpoint {folder}/{bad} does not restore (")
  assert said[1] == f"moved the damaged checkpoint {bad} to {workdir}/damaged_checkpoints/{bad}"
  assert os.path.isdir(os.path.join(workdir, "damaged_checkpoints", str(bad)))   # kept
  assert sorted(os.listdir(folder)) == sorted([str(s) for s in (1, 2, 3) if s != bad]
                                              + ["notes.txt"])


def test_no_restorable_checkpoint_lists_each_one_and_moves_nothing(workdir):
  folder = os.path.join(workdir, "checkpoints")
  for step in (1, 2, 3):
    _zero_fill(os.path.join(folder, str(step)))
  with pytest.raises(checkpoint.CheckpointError) as e:
    _restore(workdir)
  lines = str(e.value).splitlines()
  assert lines[0].startswith("no checkpoint of this run restores")
  assert [line.split(":")[0].strip() for line in lines[1:]] == [
      f"{folder}/{s}" for s in (3, 2, 1)]
  assert sorted(os.listdir(folder)) == ["1", "2", "3", "notes.txt"]
  assert not os.path.exists(os.path.join(workdir, "damaged_checkpoints"))


def test_an_interrupted_save_is_removed_on_start_and_user_files_kept(workdir, capsys):
  folder = os.path.join(workdir, "checkpoints")
  tmp = os.path.join(folder, "4.orbax-checkpoint-tmp")
  os.makedirs(os.path.join(tmp, "state.orbax-checkpoint-tmp"))
  with open(os.path.join(tmp, "state.orbax-checkpoint-tmp", "half"), "wb") as f:
    f.write(b"\0" * 100)
  step, _ = _restore(workdir)
  assert step == 3
  assert f"removed {tmp}: an unfinished save of an interrupted run" in capsys.readouterr().out
  assert sorted(os.listdir(folder)) == ["1", "2", "3", "notes.txt"]


def test_params_only_restore_skips_a_damaged_newest_checkpoint(workdir, capsys):
  """What `xmodal.load` and `xmodal eval` use: the newest checkpoint whose params restore."""
  _zero_fill(os.path.join(workdir, "checkpoints", "3"))
  params, step = checkpoint.restore_params(workdir, _abstract()["params"])
  assert step == 2
  np.testing.assert_array_equal(params["b"], np.arange(8.0) + 2)
  assert "checkpoints/3 does not restore (" in capsys.readouterr().out
  with pytest.raises(checkpoint.CheckpointError, match="checkpoints/3: does not restore"):
    checkpoint.restore_params(workdir, _abstract()["params"], step=3)


def test_tracebacks_of_orbax_tasks_are_dropped_and_others_kept():
  """A failed save's abandoned write tasks are logged by asyncio ("_GatheringFuture
  exception was never retrieved") with a traceback through Orbax's code but no Orbax path
  in the message: dropped, like Orbax's own records. Any other error record is kept."""
  import logging
  namespace = {}
  fake = os.path.join(os.sep, "site-packages", "orbax", "checkpoint", "serialization.py")
  exec(compile("def write():\n  raise ValueError('OUT_OF_RANGE: File too large')\n", fake,
               "exec"), namespace)

  def record(exc_from, message):
    try:
      exc_from()
    except ValueError:
      import sys
      info = sys.exc_info()
    return logging.LogRecord("asyncio", logging.ERROR, "/usr/lib/asyncio/base_events.py", 1,
                             message, (), info)

  def mine():
    raise ValueError("a bug of ours")

  gathering = "future: <_GatheringFuture finished exception=ValueError('OUT_OF_RANGE')>"
  assert not checkpoint._FILTER.filter(record(namespace["write"], gathering))
  assert checkpoint._FILTER.filter(record(mine, gathering))
  assert checkpoint._FILTER.filter(logging.LogRecord("asyncio", logging.WARNING, "x", 1,
                                                     "no traceback", (), None))
