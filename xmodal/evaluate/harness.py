"""Running the tasks of `config.eval.tasks`: which are due at a step, each on its own data,
their metrics named "<task>/<metric>".

    evaluation = Evaluation(config, model, mesh)           # once, at setup
    metrics = evaluation.run_due(step, params)             # in the loop: None if none due
    metrics = evaluation.run_due(step, params, final=True) # every task

A task runs at every multiple of its `every` (0 = train.eval_every; 0 there too = only at
the end); every task runs at the end and in `xmodal eval`. Beside the tasks' metrics a
round reports "eval/time_s" (the whole round) and "eval/nonfinite" (embedded rows holding a
NaN or inf, which the evaluators score as misses). Every process takes part (embedding
and ranking run on the mesh); process 0 writes.
"""

import logging
import time

from xmodal import embed
from xmodal.evaluate import kinds
from xmodal.evaluate.context import Context


def resolve(config) -> dict:
  """{name: task section with every field} of config.eval.tasks, in name order."""
  tasks = config.eval.get("tasks", None) or {}
  return {name: kinds.with_defaults(task) for name, task in tasks.items()}


def run_task(context: Context, name: str, task) -> dict:
  """One task on the context's params -> its metrics, unprefixed ({"top1": ..})."""
  context.where = f"eval.tasks.{name}"
  return {k: float(v) for k, v in kinds.get(task.kind).run(context, task).items()}


class Evaluation:
  """The tasks of one run, with the embedder and the prepared inputs they share."""

  def __init__(self, config, model, mesh, tasks=None, embedder=None):
    self.config = config
    self.tasks = resolve(config) if tasks is None else tasks
    self.embedder = embedder or embed.Embedder(model, mesh, config.eval.batch_size)
    self.context = Context(config, self.embedder)
    self.times = {}                 # task -> seconds, last round

  def every(self, name: str) -> int:
    return self.tasks[name].every or self.config.train.eval_every

  def due(self, step: int, final: bool = False) -> list[str]:
    return [n for n in self.tasks if final or (self.every(n) and step % self.every(n) == 0)]

  def run(self, params, step: int, names=None) -> dict:
    """Runs `names` (default: every task) on `params` -> {"<task>/<metric>": float,
    "eval/time_s", "eval/nonfinite"}."""
    names = list(self.tasks) if names is None else names
    t0 = time.time()
    self.context_for(params, step)
    out = {}
    for name in names:
      t = time.time()
      metrics = run_task(self.context, name, self.tasks[name])
      self.times[name] = time.time() - t
      if not metrics:
        logging.info("eval task %s: not applicable to this model or data; nothing reported",
                     name)
      out.update({f"{name}/{k}": v for k, v in metrics.items()})
    out["eval/nonfinite"] = self.context.nonfinite
    out["eval/time_s"] = time.time() - t0
    return out

  def context_for(self, params, step: int) -> Context:
    """The shared context, set to a new round with `params`."""
    self.context.new_round(params, step)
    return self.context

  def run_due(self, step: int, params, final: bool = False) -> dict | None:
    names = self.due(step, final)
    return self.run(params, step, names) if names else None

  def plot_similarity(self, workdir: str, step: int, n: int = 32) -> str | None:
    """similarity_<step>.png of the first tower pair on the run's own held-out split, when
    this round embedded it."""
    from xmodal import config as config_lib, metrics as metrics_lib  # noqa: PLC0415
    a, b = config_lib.loss_pairs(self.config)[0]
    z = self.context.own_embeddings((a, b))
    if z is None:
      return None
    return metrics_lib.plot_similarity(workdir, z[a][:n], z[b][:n], a, b, step, n)
