"""`xmodal eval --workdir DIR`: restore a run's params and evaluate them on its held-out
split, or on another one: `--config=FILE` and `--config.KEY=VALUE` change the evaluation
fields (EVAL_FIELDS: class names, templates, the eval data), never the model.

Results go to stdout, the workdir's metrics.jsonl (rows marked "run": "eval_stepN") and
the TensorBoard run `tensorboard/eval_stepN`: an evaluation of an earlier step written into
the run's own event files would make TensorBoard drop the run's later points.
"""

import json

from xmodal import config as config_lib, config_cli, evaluate, metrics as metrics_lib, notebook

# What `xmodal eval` may change: what the evaluation reads. A prefix ends with ".".
EVAL_FIELDS = ("eval.", "data.eval_source", "data.eval_files", "data.eval_manifest",
               "data.tfds_eval_split", "data.tfds_name", "data.tfds_data_dir",
               "data.tfds_keys", "data.image_key", "data.caption_key", "data.label_key",
               "data.shapes_eval_size", "data.synthetic_eval_size", "data.read_threads",
               "data.num_workers")
# What defines the trained model and the inputs it expects.
MODEL_FIELDS = ("towers.", "model.", "loss.", "init.", "data.image_size", "data.tokenizer",
                "data.tokenizer_path", "data.context_length", "data.lowercase",
                "data.image_dtype", "data.normalize")


def _is(key: str, fields) -> bool:
  return any(key.startswith(f) if f.endswith(".") else key == f for f in fields)


def _refusal(key: str) -> str:
  allowed = ", ".join(f + "*" if f.endswith(".") else f for f in EVAL_FIELDS)
  why = ("would change the model the run trained" if _is(key, MODEL_FIELDS) else
         "is not an evaluation field")
  return f"config.{key}: {why}; `xmodal eval` takes only {allowed}"


def eval_config(workdir: str, config_file: str | None = None, overrides=()):
  """The run's config with the evaluation fields of `config_file` and `overrides`
  ([(dotted key, raw value)]); ConfigError naming the first key that would change the
  model, has no effect on evaluation, or is invalid."""
  config = notebook.load_config(workdir)
  if config_file:
    from xmodal import train   # noqa: PLC0415 (the saved-run comparison lives there)
    other = config_cli.load_file(config_file)
    ran = train._flatten(json.loads(config.to_json()))
    given = train._flatten(json.loads(other.to_json()))
    defaults = train._schema_defaults(config)
    for key in sorted(given):
      trained = ran.get(key, defaults.get(key))    # keys added to the schema since: default
      if _is(key, EVAL_FIELDS):
        (dst, leaf), (src, _) = config_cli.locate(config, key), config_cli.locate(other, key)
        dst[leaf] = src[leaf]
      elif _is(key, MODEL_FIELDS) and given[key] != trained:
        raise config_lib.ConfigError(
            f"config.{key}: {config_file} has {given[key]!r} but the run in {workdir} trained "
            f"with {trained!r}; `xmodal eval` cannot change the model")
  for key, _ in overrides:
    config_cli.locate(config, key)        # an unknown key first: "did you mean ..."
    if not _is(key, EVAL_FIELDS):
      raise config_lib.ConfigError(_refusal(key))
  config_cli.apply_overrides(config, overrides)
  config_lib.validate_eval(config)
  return config


def evaluate_workdir(workdir: str, step: int | None = None, config=None) -> dict:
  """Evaluates the run in `workdir` at `step` (default: newest) with `config` (default:
  the run's own, see `eval_config`): every task of its eval.tasks. Returns the metrics."""
  loaded = notebook.load(workdir, step, config=config)
  evaluation = evaluate.Evaluation(loaded.config, loaded.model, loaded.mesh)
  results = evaluation.run(loaded.params, loaded.step)
  writer = metrics_lib.MetricWriter(workdir, run=f"eval_step{loaded.step}")
  writer.write(loaded.step, results, "eval: ")
  writer.close()
  return results
