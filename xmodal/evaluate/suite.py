"""Evaluation suites: many tasks on one checkpoint, and their results as a table and a plot.

A suite file is either Python, whose `get_config(arg)` returns a ConfigDict of named tasks
(what `config.eval.tasks` holds), or JSON holding {name: task}; tasks may leave fields out
(their kind's defaults fill them):

    def get_config(arg=None):
      return ml_collections.ConfigDict(dict(
          cifar10=dict(kind="zeroshot", prompts="cifar10", data=dict(
              eval_source="tfds", tfds_name="cifar10", tfds_eval_split="test",
              tfds_keys="image=image,label=label")),
          coco=dict(kind="retrieval", captions="all", data=dict(
              eval_source="manifest", eval_files="/data/coco/karpathy_test.jsonl"))))

`xmodal eval --workdir RUN --suite FILE` runs every task and writes, to `--out` (default
RUN/suites/<file name>_step<N>): results.json (every metric of every task), results.md
(one row per task with its score; the mean score over the tasks that have one, as
DataComp averages its 38 tasks, and the mean per kind) and results.png (the scores as
bars).
"""

import json
import os

import ml_collections

from xmodal import config_cli
from xmodal.config import ConfigError
from xmodal.evaluate import kinds


def load(spec: str) -> ml_collections.ConfigDict:
  """The tasks of a suite file ("suite.py[:ARG]" or "suite.json"), each with its kind's
  defaults filled in."""
  path = spec.partition(":")[0]
  if path.endswith(".json"):
    if not os.path.isfile(path):
      raise ConfigError(f"--suite: no such file {path!r}")
    try:
      with open(path, encoding="utf-8") as f:
        given = json.load(f)
    except json.JSONDecodeError as e:
      raise ConfigError(f"{path}:{e.lineno}: not valid JSON ({e.msg}) (--suite)") from None
    tasks = ml_collections.ConfigDict(given)
  else:
    tasks = config_cli.load_file(spec)
    if "eval" in tasks and "tasks" in tasks.eval:    # a whole config: its tasks
      tasks = tasks.eval.tasks
  if not len(tasks):
    raise ConfigError(f"--suite: {path} holds no tasks")
  for name in tasks.keys():
    if not isinstance(tasks[name], (ml_collections.ConfigDict, dict)):
      raise ConfigError(f"{path}: task {name!r} is {tasks[name]!r}, expected a task section "
                        f"(kind=..., data=..., options) (--suite)")
  return ml_collections.ConfigDict({n: kinds.with_defaults(t) for n, t in tasks.items()})


def describe_data(task) -> str:
  """A task's data in a few words: "tfds cifar10[test]", "manifest /d/coco.jsonl", ..."""
  d = task.get("data", None) or {}
  if not d:
    return "the run's held-out split"
  kind = d.get("eval_source") or d.get("source") or "the run's source"
  if kind == "tfds":
    return f"tfds {d.get('tfds_name', '?')}[{d.get('tfds_eval_split', 'validation')}]"
  where = d.get("eval_files") or d.get("eval_manifest") or ""
  return f"{kind} {where}".strip()


def score(task, metrics: dict) -> float | None:
  module = kinds.get(task.kind)
  return module.score(metrics) if hasattr(module, "score") and metrics else None


def results(tasks, metrics: dict, times: dict, step: int, name: str = "") -> dict:
  """The JSON of a suite run: per task its kind, data, score, time and metrics; the mean
  score over tasks with one, and per kind."""
  rows = {}
  for task_name, task in tasks.items():
    own = {k.split("/", 1)[1]: v for k, v in metrics.items() if k.startswith(task_name + "/")}
    rows[task_name] = {"kind": task.kind, "data": describe_data(task),
                       "score": score(task, own), "time_s": times.get(task_name),
                       "metrics": own}
  scored = [r["score"] for r in rows.values() if r["score"] is not None]
  by_kind = {}
  for r in rows.values():
    if r["score"] is not None:
      by_kind.setdefault(r["kind"], []).append(r["score"])
  return {"suite": name, "step": step, "tasks": rows,
          "average": sum(scored) / len(scored) if scored else None,
          "average_by_kind": {k: sum(v) / len(v) for k, v in sorted(by_kind.items())}}


SCORES = ("score: zeroshot, linear_probe, knn top-1; fewshot top-1 at the largest shot count; "
          "retrieval the mean Recall@1 over both directions; knn regression Pearson r; "
          "geometry none")


def markdown(res: dict) -> str:
  def cell(v):
    return "" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v)
  lines = [f"# Evaluation suite {res['suite']} at step {res['step']}", "",
           "| task | kind | data | score | examples | time (s) |", "|---|---|---|---|---|---|"]
  for name, r in res["tasks"].items():
    examples = r["metrics"].get("examples")
    lines.append(f"| {name} | {r['kind']} | {r['data']} | {cell(r['score'])} | "
                 f"{cell(int(examples)) if examples is not None else ''} | "
                 f"{cell(r['time_s'])} |")
  n = sum(r["score"] is not None for r in res["tasks"].values())
  lines.append(f"| **average** ({n} tasks) | | | **{cell(res['average'])}** | | |")
  for kind, v in res["average_by_kind"].items():
    lines.append(f"| average {kind} | | | {cell(v)} | | |")
  return "\n".join(lines + ["", SCORES, ""])


def plot(res: dict, path: str) -> str | None:
  """A horizontal bar per task with a score, and the average as a line."""
  scored = [(n, r["score"]) for n, r in res["tasks"].items() if r["score"] is not None]
  if not scored:
    return None
  import matplotlib  # noqa: PLC0415
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # noqa: PLC0415
  fig, ax = plt.subplots(figsize=(6, 1 + 0.35 * len(scored)))
  names, values = zip(*scored)
  ax.barh(range(len(values)), values, color="tab:blue")
  ax.set_yticks(range(len(values)), names)
  ax.invert_yaxis()
  ax.axvline(res["average"], color="tab:orange", linestyle="--",
             label=f"average {res['average']:.3f}")
  ax.set_xlim(0, max(1.0, max(values)))
  ax.set_xlabel("score")
  ax.set_title(f"{res['suite']} at step {res['step']}")
  ax.legend(loc="lower right")
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path


def write(out_dir: str, res: dict) -> dict:
  """results.json, results.md and results.png in out_dir -> {kind: path}."""
  os.makedirs(out_dir, exist_ok=True)
  paths = {"json": os.path.join(out_dir, "results.json"),
           "md": os.path.join(out_dir, "results.md")}
  with open(paths["json"], "w") as f:
    json.dump(res, f, indent=2)
  with open(paths["md"], "w") as f:
    f.write(markdown(res))
  png = plot(res, os.path.join(out_dir, "results.png"))
  if png:
    paths["png"] = png
  return paths
