"""The `xmodal` command.

  xmodal train [--config=FILE.py[:ARG]] [--workdir=DIR] [--config.KEY=VALUE ...]
  xmodal eval  --workdir=DIR [--step=N]

Multi-process (one process per host): add --coordinator=HOST:PORT --num_processes=N
--process_id=I, or nothing on Cloud TPU pods and under SLURM (detected).

`train` with no --config runs the embedded default (xmodal/default_config.py). A workdir
that already holds checkpoints is resumed from the newest one. `eval` restores a run's
params and evaluates them on the run's held-out split.
"""

import errno
import logging
import os
import sys

from absl import flags
from ml_collections import config_flags

DEFAULT_CONFIG = os.path.join(os.path.dirname(__file__), "default_config.py")
USAGE = __doc__

config_flags.DEFINE_config_file("config", DEFAULT_CONFIG, "Experiment config file (.py).",
                                lock_config=True)
flags.DEFINE_string("workdir", "runs/default", "Where checkpoints, metrics and plots go.")
flags.DEFINE_integer("step", None, "eval: the checkpoint step (default: newest).")
flags.DEFINE_string("coordinator", None, "Multi-process: host:port of process 0 (optional on "
                    "TPU pods and under SLURM, where JAX finds it).")
flags.DEFINE_integer("num_processes", None, "Multi-process: how many processes in all.")
flags.DEFINE_integer("process_id", None, "Multi-process: this process's index.")


def main(argv=None) -> int:
  argv = list(sys.argv if argv is None else argv)
  if len(argv) < 2 or argv[1] not in ("train", "eval"):
    print(USAGE, file=sys.stderr)
    return 2
  command = argv.pop(1)
  try:
    flags.FLAGS(argv)
  except flags.Error as e:
    print(f"xmodal {command}: {e}", file=sys.stderr)
    return 2
  logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
  from xmodal import checkpoint, config as config_lib, guard, interrupt, parallel
  try:
    parallel.initialize_distributed(flags.FLAGS.coordinator, flags.FLAGS.num_processes,
                                    flags.FLAGS.process_id)
    if command == "train":
      from xmodal import train
      train.train(flags.FLAGS.config, flags.FLAGS.workdir)
    else:
      from xmodal import evaluate_run
      evaluate_run.evaluate_workdir(flags.FLAGS.workdir, flags.FLAGS.step)
  except interrupt.Interrupted as e:        # a checkpoint was saved first
    print(f"xmodal {command}: {e}", file=sys.stderr)
    return e.exit_code()
  except (config_lib.ConfigError, checkpoint.CheckpointError, guard.NonFiniteError,
          ValueError) as e:
    print(f"xmodal {command}: error: {e}", file=sys.stderr)
    return 1
  except OSError as e:                      # a missing file, a full disk, ...
    full = e.errno in (errno.ENOSPC, errno.EDQUOT)
    print(f"xmodal {command}: error: {e}"
          + (f" ({checkpoint.free_space(e.filename or '.')})" if full else ""), file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
