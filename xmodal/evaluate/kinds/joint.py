"""Joint retrieval for objectives that score three or more towers at once (Symile, GRAM):
each tower of a loss term's group retrieved from the group's other towers together, with
the objective's own score (xmodal/evaluate/joint.py), on the evaluation split.

Metrics: "<term>/<others>_to_<m>/R1" (R5, R10) for every Symile / GRAM term's groups of
three or more towers, "examples", "skipped"; nothing for a loss without such a term.
"""

SPLITS = ("eval",)
FIELDS = {}


def run(ctx, task) -> dict:
  import numpy as np  # noqa: PLC0415
  from xmodal.evaluate import joint  # noqa: PLC0415
  towers = joint.towers(ctx.config)
  if not towers:
    return {}
  rows = ctx.embedded(task, "eval", towers)
  ok = np.all([np.all(np.isfinite(rows.z[t]), axis=1) for t in towers], axis=0)
  out = joint.metrics(ctx.config, {t: rows.z[t][ok] for t in towers})
  return {**out, "examples": int(ok.sum()), "skipped": rows.skipped}
