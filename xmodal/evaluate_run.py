"""`xmodal eval --workdir DIR`: restore a run's params and evaluate them on its held-out
split; results go to stdout, the workdir's metrics.jsonl (as eval rows) and TensorBoard."""

from xmodal import evaluate, metrics as metrics_lib, notebook
from xmodal.data import pipeline


def evaluate_workdir(workdir: str, step: int | None = None) -> dict:
  loaded = notebook.load(workdir, step)
  data = pipeline.eval_arrays(loaded.config)
  results, _ = evaluate.run(loaded.config, loaded.embedder, loaded.params, data)
  writer = metrics_lib.MetricWriter(workdir)
  writer.write(loaded.step, results, "eval: ")
  writer.close()
  return results
