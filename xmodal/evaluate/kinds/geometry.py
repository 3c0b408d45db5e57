"""The geometry of the shared space, per tower pair, on the evaluation split
(xmodal/evaluate/geometry.py): the modality gap (distance between the towers' centroids),
alignment (mean squared distance of matching rows), and per tower uniformity and effective
rank. Uniformity costs N^2 x D: bound N with `max_examples` on large splits.

Metrics: "<a>-<b>/gap", "<a>-<b>/alignment", "<m>/uniformity", "<m>/effective_rank";
"examples" (rows whose embeddings are finite in both towers of every pair), "skipped".
"""

from xmodal.evaluate.kinds import retrieval
from xmodal.fields import Field

FIELDS = dict(
    pairs=Field((), "('a:b', ...) tower pairs; empty = the loss pairs (config.loss.pairs, "
                "else every pair of towers)"),
)
SPLITS = ("eval",)


def check(config, task, where: str) -> None:
  retrieval.check_pairs(config, task.pairs, where)


def run(ctx, task) -> dict:
  import numpy as np  # noqa: PLC0415
  from xmodal.evaluate import geometry  # noqa: PLC0415
  pairs = retrieval.pairs_of(ctx.config, task)
  towers = sorted({m for p in pairs for m in p})
  rows = ctx.embedded(task, "eval", towers)
  ok = np.all([np.all(np.isfinite(rows.z[t]), axis=1) for t in towers], axis=0)
  out = {}
  if not ok.any():                  # no finite rows (a diverged model): nothing to measure
    return {"examples": 0, "skipped": rows.skipped}
  for a, b in pairs:
    out.update(geometry.pair_metrics(a, rows.z[a][ok], b, rows.z[b][ok]))
  return {**out, "examples": int(ok.sum()), "skipped": rows.skipped}
