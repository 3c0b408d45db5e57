"""Linear probe: multinomial logistic regression on frozen embeddings of one tower (CLIP's
linear-probe evaluation), fitted with L-BFGS (xmodal/evaluate/linear_probe.py: the same
objective as scikit-learn's LogisticRegression).

The regularisation strength is chosen on a held-out `val_fraction` of the training split
(drawn with `seed`), the probe refitted on the whole training split at that strength, and
scored on the evaluation split.

Metrics: "top1", "l2" (chosen), "val_top1", "train_examples", "examples", "skipped".
"""

import numpy as np

from xmodal.evaluate.kinds import _probe
from xmodal.fields import Field

FIELDS = dict(
    **_probe.FIELDS,
    val_fraction=Field(0.2, "part of the training split held out to choose l2", gt=0, lt=1),
    l2=Field(tuple(10.0 ** k for k in range(-6, 3)),
             "L2 strengths swept (mean cross-entropy + l2/2 ||W||^2)", gt=0),
    max_iter=Field(500, "L-BFGS iterations at most per fit", gt=0),
    seed=Field(0, "seeds the validation split", ge=0),
)
SPLITS = _probe.SPLITS
check = _probe.check


def run(ctx, task) -> dict:
  from xmodal.evaluate import linear_probe  # noqa: PLC0415
  from xmodal.evaluate.kinds import TaskError  # noqa: PLC0415
  name, train, test = _probe.read(ctx, task)
  ok = _probe.finite(train.z[name])
  x, y = train.z[name][ok], train.labels[ok]
  if len(x) < 2:
    raise TaskError(f"config.{ctx.where}: {len(x)} usable training rows; a probe needs more")
  perm = np.random.default_rng(task.seed).permutation(len(x))
  n_val = min(max(1, round(task.val_fraction * len(x))), len(x) - 1)
  val, fit = perm[:n_val], perm[n_val:]
  num_classes = int(max(train.labels.max(), test.labels.max())) + 1
  shown = _probe.finite(test.z[name])
  result = linear_probe.sweep(x[fit], y[fit], x[val], y[val], test.z[name][shown],
                              test.labels[shown], num_classes, tuple(task.l2))
  # Rows with a non-finite embedding are misses: accuracy over every row of the split.
  result["top1"] *= shown.mean()
  return {**result, "train_examples": len(x), **test.counts()}


def score(metrics: dict) -> float | None:
  return metrics.get("top1")
