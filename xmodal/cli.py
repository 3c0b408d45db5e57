"""The `xmodal` command: `xmodal train`, `xmodal eval`, `xmodal embed` and `xmodal filter`
(`xmodal COMMAND --help`).

A config or usage error (a bad key, value, config file, workdir or step) is one line and
exit status 2; a data problem the project detects (a source or manifest it cannot read) one
line and status 1; anything else is a bug and shows its traceback.
"""

import argparse
import errno
import logging
import sys

from xmodal import config as config_lib, config_cli

DOCS_LINE = (f"Config keys, their defaults and meaning: {config_cli.DOCS} "
             f"(the schema: xmodal/default_config.py).")

TRAIN_HELP = f"""\
Trains the run in --workdir: the embedded default with no --config, or the experiment a
config file's get_config(ARG) returns. A workdir that already holds checkpoints resumes from
the newest one; a config that differs from the run's in anything but train.*, eval.*, mesh.*
and the loader's worker/thread counts is refused with the differing key named.

  --config.KEY=VALUE   override any key of the config, e.g. --config.batch_size=256,
                       --config.loss.name=sigmoid, --config.mesh.data="-1",
                       --config.train.frozen="('image/.*',)"; a bare --config.KEY sets a
                       bool key to true, --noconfig.KEY to false

Multi-process (one process per host): --coordinator, --num_processes, --process_id, or
nothing on Cloud TPU pods and under SLURM (JAX finds them).

{DOCS_LINE}"""

EVAL_HELP = f"""\
Scores a run's checkpoint (the newest, or --step) with every task of its eval.tasks (by
default retrieval and zero-shot on the held-out split), or with the tasks of a suite file.
Results go to stdout, the workdir's metrics.jsonl (rows marked "run": "eval_stepN") and
TensorBoard run tensorboard/eval_stepN, apart from the run's own evaluations; with --suite
or --out also a results table (results.md, results.json) and a bar chart (results.png).

  --suite=FILE[.py|.json] the tasks to run (named tasks: kind, data, options), in place of
                          the run's; docs/evaluation.md
  --out=DIR               where the results table goes (default with --suite:
                          WORKDIR/suites/<suite>_step<N>)
  --config=FILE.py[:ARG]  take the evaluation fields from a config file; its model fields
                          must equal the run's
  --config.KEY=VALUE      override an evaluation field: eval.* (eval.tasks.NAME.FIELD,
                          classnames, templates, batch_size), data.eval_source,
                          data.eval_files, data.tfds_eval_split and the eval data's column
                          and tfds settings; a key that would change the model is refused

{DOCS_LINE}"""

EMBED_HELP = f"""\
Writes the embeddings of every row of a split (--split; the run's data, or the data
fields given with --config.data.KEY=VALUE: any source the pipeline reads) by the towers
of a checkpoint to sharded files in --out: npy (memory-mappable) or Parquet, with each
row's index in the source and its key. Resumable: a second run skips the shards already
written. Each process writes its own shards on its own devices. Then `xmodal filter`.

{DOCS_LINE}"""

FILTER_HELP = """\
Keeps the rows whose embeddings by two towers agree (cosine similarity: DataComp's CLIP
score) and writes them, read again from their source, as a new manifest (.jsonl, or
.parquet for sources of encoded images) with a "similarity" column:
  --threshold=T   keep rows scoring at least T
  --fraction=F    keep the best F of the rows (0.5: the top half)
Train on it with --config.data.source=manifest --config.data.train_files=OUT."""


MULTI = "[--coordinator=HOST:PORT --num_processes=N --process_id=I]"


class _Parser(argparse.ArgumentParser):
  """argparse that reports a usage error as one line (and exit status 2)."""

  def error(self, message):
    self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _parser() -> argparse.ArgumentParser:
  fmt = argparse.RawDescriptionHelpFormatter
  parser = _Parser(prog="xmodal", formatter_class=fmt,
                   description="Cross-modal contrastive pretraining in JAX.")
  commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
  train = commands.add_parser(
      "train", help="train (or resume) a run", formatter_class=fmt, description=TRAIN_HELP,
      usage="xmodal train [--config=FILE.py[:ARG]] [--config.KEY=VALUE ...] [--workdir=DIR] "
            f"{MULTI}")
  train.add_argument("--config", metavar="FILE.py[:ARG]",
                     help="experiment config file (default: the embedded default); ARG is "
                          "passed to its get_config")
  train.add_argument("--workdir", default="runs/default", metavar="DIR",
                     help="where checkpoints, metrics and plots go (default: %(default)s)")
  evaluate = commands.add_parser(
      "eval", help="evaluate a run's checkpoint", formatter_class=fmt, description=EVAL_HELP,
      usage="xmodal eval [--workdir=DIR] [--step=N] [--suite=FILE] [--out=DIR] "
            f"[--config=FILE.py[:ARG]] [--config.KEY=VALUE ...] {MULTI}")
  evaluate.add_argument("--workdir", default="runs/default", metavar="DIR",
                        help="the run to evaluate (default: %(default)s)")
  evaluate.add_argument("--step", type=int, metavar="N", help="checkpoint step (default: the newest)")
  evaluate.add_argument("--config", metavar="FILE.py[:ARG]",
                        help="config file to take the evaluation fields from")
  evaluate.add_argument("--suite", metavar="FILE", help="tasks to run (.py or .json)")
  evaluate.add_argument("--out", metavar="DIR", help="write the results table here")
  embed = commands.add_parser(
      "embed", help="embeddings of a split to sharded files", formatter_class=fmt,
      description=EMBED_HELP,
      usage="xmodal embed --out=DIR [--workdir=DIR] [--step=N] [--split=train|eval] "
            f"[--towers=a,b] [--format=npy|parquet] [--shard_size=N] [--config.KEY=VALUE ...] "
            f"{MULTI}")
  embed.add_argument("--workdir", default="runs/default", metavar="DIR",
                     help="the run whose checkpoint embeds (default: %(default)s)")
  embed.add_argument("--out", required=True, metavar="DIR", help="where the shards go")
  embed.add_argument("--step", type=int, metavar="N", help="checkpoint step (default: newest)")
  embed.add_argument("--split", default="train", choices=("train", "eval"),
                     help="which split of the data (default: %(default)s)")
  embed.add_argument("--towers", metavar="A,B", help="towers to embed (default: all)")
  embed.add_argument("--format", default="npy", choices=("npy", "parquet"),
                     help="shard files (default: %(default)s)")
  embed.add_argument("--shard_size", type=int, default=10_000, metavar="N",
                     help="rows per shard (default: %(default)s)")
  filt = commands.add_parser(
      "filter", help="keep rows whose embeddings agree; write a manifest", formatter_class=fmt,
      description=FILTER_HELP,
      usage="xmodal filter --embeddings=DIR --out=FILE.jsonl|.parquet "
            "(--threshold=T | --fraction=F) [--pair=a:b]")
  filt.add_argument("--embeddings", required=True, metavar="DIR",
                    help="what `xmodal embed` wrote")
  filt.add_argument("--out", required=True, metavar="FILE", help="the new manifest")
  filt.add_argument("--threshold", type=float, metavar="T", help="keep scores >= T")
  filt.add_argument("--fraction", type=float, metavar="F", help="keep the best F of rows")
  filt.add_argument("--pair", metavar="A:B", help="the two towers (default: those embedded)")
  for sub in (train, evaluate, embed):
    group = sub.add_argument_group("multi-process")
    group.add_argument("--coordinator", metavar="HOST:PORT",
                       help="address of process 0 (optional on TPU pods and under SLURM)")
    group.add_argument("--num_processes", type=int, metavar="N",
                       help="how many processes in all")
    group.add_argument("--process_id", type=int, metavar="I", help="this process's index")
  parser.commands = {"train": train, "eval": evaluate, "embed": embed, "filter": filt}
  parser.epilog = "\n".join(
      ["commands:"] + [f"  {p.format_usage().strip().removeprefix('usage: ')}"
                       for p in (train, evaluate, embed, filt)]
      + ["", "`xmodal COMMAND --help` lists a command's flags.", DOCS_LINE])
  return parser


def split_overrides(args: list[str]) -> tuple[list[str], list[tuple[str, str | None]]]:
  """Pulls `--config.KEY=VALUE`, `--config.KEY VALUE`, `--config.KEY` (bool true) and
  `--noconfig.KEY` (bool false) out of `args`; returns (other args, [(KEY, VALUE)])."""
  rest, overrides = [], []
  i = 0
  while i < len(args):
    arg = args[i]
    if arg.startswith("--noconfig."):
      overrides.append((arg[len("--noconfig."):], "false"))
    elif arg.startswith("--config."):
      key, has_value, value = arg[len("--config."):].partition("=")
      if not has_value and i + 1 < len(args) and not args[i + 1].startswith("--"):
        i, value, has_value = i + 1, args[i + 1], True
      overrides.append((key, value if has_value else None))
    else:
      rest.append(arg)
    i += 1
  return rest, overrides


def main(argv=None) -> int:
  argv = list(sys.argv if argv is None else argv)
  parser = _parser()
  # Old key names (--config.init.from=...) are rewritten to the new ones first.
  rest, overrides = split_overrides(config_lib.rename_overrides(argv[1:]))
  args, unknown = parser.parse_known_args(rest)
  if args.command is None:
    parser.print_help(sys.stderr)
    return 2
  if unknown:
    parser.commands[args.command].error(f"unrecognized arguments: {' '.join(unknown)}")
  given = [getattr(args, k, None) is not None
           for k in ("coordinator", "num_processes", "process_id")]
  if any(given) and not all(given):
    parser.commands[args.command].error("--coordinator, --num_processes and --process_id go "
                                        "together")
  logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
  if overrides and args.command == "filter":
    parser.commands["filter"].error("takes no --config.KEY overrides")
  from xmodal import default_config
  from xmodal.data import manifest, sources
  from xmodal.evaluate import kinds
  try:
    if args.command == "train":
      config = config_cli.load_file(args.config) if args.config else default_config.get_config()
      config_lib.upgrade(config)                        # keys renamed since the file was written
      kinds.fill(config)                                # every field of every eval task
      config_cli.apply_overrides(config, overrides)     # before JAX is imported: fast errors
      from xmodal import parallel, train
      parallel.initialize_distributed(args.coordinator, args.num_processes, args.process_id)
      train.train(config, args.workdir)
    elif args.command == "eval":
      from xmodal import evaluate_run, parallel
      request = evaluate_run.eval_config(args.workdir, args.config, overrides, args.suite)
      parallel.initialize_distributed(args.coordinator, args.num_processes, args.process_id)
      evaluate_run.evaluate_workdir(args.workdir, args.step, request, args.out, args.suite)
    elif args.command == "embed":
      _embed(args, overrides)
    else:
      from xmodal import filter_run
      done = filter_run.filter_embeddings(args.embeddings, args.out, args.pair, args.threshold,
                                          args.fraction)
      print(f"kept {done['kept']} of {done['rows']} rows (similarity >= "
            f"{done['threshold']}) in {args.out}", flush=True)
  except (config_lib.ConfigError, config_lib.WorkdirError) as e:   # what was asked: usage
    print(f"xmodal {args.command}: error: {e}", file=sys.stderr)
    return 2
  except (sources.SourceError, manifest.ManifestError, kinds.TaskError) as e:   # the data
    print(f"xmodal {args.command}: error: {e}", file=sys.stderr)
    return 1
  except Exception as e:                                             # noqa: BLE001
    reported = _run_failure(e)
    if reported is None:
      raise                                  # a bug: its traceback
    message, code = reported
    print(f"xmodal {args.command}: {message}", file=sys.stderr)
    return code
  return 0


def _run_failure(e: Exception) -> tuple[str, int] | None:
  """(one line, exit status) for what stops a run without being a bug: a signal (after its
  checkpoint; 128 + the signal), a checkpoint that cannot be written or restored, too many
  non-finite steps, a full disk; None for anything else."""
  from xmodal import checkpoint, guard, interrupt   # noqa: PLC0415 (imported by the run)
  if isinstance(e, interrupt.Interrupted):
    return str(e), e.exit_code()
  if isinstance(e, (checkpoint.CheckpointError, guard.NonFiniteError)):
    return f"error: {e}", 1
  if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
    return f"error: {e} ({checkpoint.free_space(e.filename or '.')})", 1
  return None


def _embed(args, overrides) -> None:
  from xmodal import embed_run, evaluate_run, notebook, parallel
  if args.shard_size <= 0:
    raise config_lib.ConfigError(f"--shard_size: must be > 0, got {args.shard_size}")
  request = evaluate_run.eval_config(args.workdir, None, overrides,
                                     fields=evaluate_run.EMBED_FIELDS, command="embed",
                                     splits=(args.split,))
  parallel.initialize_distributed(args.coordinator, args.num_processes, args.process_id)
  loaded = notebook.load(args.workdir, args.step, config=request)
  towers = args.towers.split(",") if args.towers else None
  done = embed_run.embed_split(loaded, args.out, args.split, towers, args.format,
                               args.shard_size, workdir=args.workdir)
  print(f"embedded {done['embedded']} rows ({done['skipped']} unreadable) into "
        f"{done['written']} shards of {args.out}; {done['already_there']} shards were already "
        f"there ({done['shards']} in all)", flush=True)


if __name__ == "__main__":
  sys.exit(main())
