"""`xmodal eval --workdir DIR`: restore a run's params and run every task of its
`eval.tasks` (by default retrieval and zero-shot on its held-out split), or the tasks of a
suite file (`--suite FILE`, xmodal/evaluate/suite.py): `--config=FILE` and
`--config.KEY=VALUE` change the evaluation fields (EVAL_FIELDS: the tasks, class names,
templates, the eval data), never the model.

Results go to stdout, the workdir's metrics.jsonl (rows marked "run": "eval_stepN") and
the TensorBoard run `tensorboard/eval_stepN`: an evaluation of an earlier step written into
the run's own event files would make TensorBoard drop the run's later points. With a suite
(or `--out`), also a results table (markdown + JSON) and a bar chart.
"""

import json
import os

from xmodal import config as config_lib, config_cli, evaluate, metrics as metrics_lib, notebook
from xmodal.evaluate import kinds

# What `xmodal eval` may change: what the evaluation reads. A prefix ends with ".".
EVAL_FIELDS = ("eval.", "data.eval_source", "data.eval_files", "data.eval_manifest",
               "data.tfds_eval_split", "data.tfds_name", "data.tfds_data_dir",
               "data.tfds_keys", "data.image_key", "data.caption_key", "data.label_key",
               "data.shapes_eval_size", "data.synthetic_eval_size", "data.read_threads",
               "data.num_workers")
# What `xmodal embed` may change: which rows it reads, from either split.
EMBED_FIELDS = EVAL_FIELDS + ("data.source", "data.train_files", "data.train_manifest",
                              "data.tfds_train_split", "data.mixture",
                              "data.shapes_train_size", "data.synthetic_train_size")
# What defines the trained model and the inputs it expects.
MODEL_FIELDS = ("towers.", "model.", "loss.", "init.") + tuple(f"data.{k}"
                                                             for k in kinds.MODEL_DATA)


def _is(key: str, fields) -> bool:
  return any(key.startswith(f) if f.endswith(".") else key == f for f in fields)


def _refusal(key: str, fields=EVAL_FIELDS, command: str = "eval") -> str:
  allowed = ", ".join(f + "*" if f.endswith(".") else f for f in fields)
  why = ("would change the model the run trained" if _is(key, MODEL_FIELDS) else
         f"is not an {'evaluation' if command == 'eval' else command} field")
  return f"config.{key}: {why}; `xmodal {command}` takes only {allowed}"


def eval_config(workdir: str, config_file: str | None = None, overrides=(),
                suite: str | None = None, fields=EVAL_FIELDS, command: str = "eval",
                splits=()):
  """The run's config with the evaluation fields of `config_file`, the tasks of `suite`
  (in place of the run's) and `overrides` ([(dotted key, raw value)]); ConfigError naming
  the first key that would change the model, has no effect on evaluation, or is invalid.
  `fields` / `command` / `splits`: what another command (`xmodal embed`) may change and
  reads (it runs no tasks; tasks check the splits they read themselves)."""
  from xmodal.evaluate import suite as suite_lib   # noqa: PLC0415
  config = notebook.load_config(workdir)
  if config_file:
    from xmodal import train   # noqa: PLC0415 (the saved-run comparison lives there)
    other = config_cli.load_file(config_file)
    ran = train._flatten(json.loads(config.to_json()))
    given = train._flatten(json.loads(other.to_json()))
    defaults = train._schema_defaults(config)
    for key in sorted(given):
      trained = ran.get(key, defaults.get(key))    # keys added to the schema since: default
      if _is(key, fields) and not key.startswith("eval.tasks."):
        (dst, leaf), (src, _) = config_cli.locate(config, key), config_cli.locate(other, key)
        dst[leaf] = src[leaf]
      elif _is(key, MODEL_FIELDS) and given[key] != trained:
        raise config_lib.ConfigError(
            f"config.{key}: {config_file} has {given[key]!r} but the run in {workdir} trained "
            f"with {trained!r}; `xmodal {command}` cannot change the model")
    if "eval" in other and "tasks" in other.eval and _is("eval.tasks.", fields):
      config.eval.tasks = other.eval.tasks          # a section of named tasks: whole
  if suite:
    config.eval.tasks = suite_lib.load(suite)
  kinds.fill(config)                      # every field of every task can be overridden
  for key, _ in overrides:
    config_cli.locate(config, key)        # an unknown key first: "did you mean ..."
    if _is(key, MODEL_FIELDS) or not _is(key, fields):
      raise config_lib.ConfigError(_refusal(key, fields, command))
  config_cli.apply_overrides(config, overrides)
  config_lib.validate_eval(config, splits, tasks=command == "eval")
  return config


def evaluate_workdir(workdir: str, step: int | None = None, config=None,
                     out: str | None = None, suite: str | None = None) -> dict:
  """Evaluates the run in `workdir` at `step` (default: newest) with `config` (default:
  the run's own, see `eval_config`): every task of its eval.tasks. Returns the metrics.
  With `out` or `suite` (the suite file's path, naming the table), also writes the results
  table and plot (xmodal/evaluate/suite.py) to `out` (default
  workdir/suites/<suite name>_step<N>)."""
  import jax  # noqa: PLC0415
  from xmodal.evaluate import suite as suite_lib   # noqa: PLC0415
  loaded = notebook.load(workdir, step, config=config)
  evaluation = evaluate.Evaluation(loaded.config, loaded.model, loaded.mesh,
                                   embedder=loaded.embedder)
  results = evaluation.run(loaded.params, loaded.step)
  writer = metrics_lib.MetricWriter(workdir, run=f"eval_step{loaded.step}")
  writer.write(loaded.step, results, "eval: ")
  writer.close()
  if (out or suite) and jax.process_index() == 0:
    name = os.path.splitext(os.path.basename((suite or "eval").partition(":")[0]))[0]
    out = out or os.path.join(workdir, "suites", f"{name}_step{loaded.step}")
    table = suite_lib.results(evaluation.tasks, results, evaluation.times, loaded.step, name)
    paths = suite_lib.write(out, table)
    print(f"results: {paths['md']} (average score {table['average']})", flush=True)
  return results
