"""Evaluation: the tasks of `config.eval.tasks`, each with its kind, data, options and cadence.

    config.eval.tasks.coco = dict(kind="retrieval", captions="all", every=1000,
                                  data=dict(eval_source="manifest", eval_files="/d/coco.jsonl"))

  harness.py    `Evaluation`: which tasks are due at a step; runs them; "<task>/<metric>"
  kinds/        one module per task kind (zeroshot, retrieval, linear_probe, fewshot, knn,
                geometry, joint), found by name or module path; each declares its fields
  context.py    the embeddings of a task's data, shared by the tasks of a round
  data.py       a task's data, read through the input pipeline
  suite.py      `xmodal eval --suite FILE`: every task of a file, a results table and a plot
The numerics, each tested against a brute-force or scikit-learn reference: ranking.py
(sharded exact ranks), retrieval.py, zeroshot.py and prompts.py, linear_probe.py,
fewshot.py, knn.py, geometry.py, joint.py (Symile / GRAM joint retrieval).

This module imports nothing heavy, so configs are checked without JAX.
"""


def __getattr__(name):
  if name in ("Evaluation", "run_task", "resolve"):
    from xmodal.evaluate import harness
    return getattr(harness, name)
  raise AttributeError(f"module 'xmodal.evaluate' has no attribute {name!r}")
