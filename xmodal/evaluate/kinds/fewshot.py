"""Few-shot linear classification: k labelled rows per class from the training split, the
closed-form least-squares probe (big_vision's few-shot evaluation;
xmodal/evaluate/fewshot.py), for each k of `shots`; the ridge strength is chosen on the
rows of the training split not drawn as shots.

Metrics: "<k>shot/top1" for each k, "examples", "skipped".
"""

from xmodal.evaluate.kinds import _probe
from xmodal.fields import Field

FIELDS = dict(
    **_probe.FIELDS,
    shots=Field((1, 5, 10, 25), "labelled rows per class", gt=0),
    l2=Field(tuple(2.0 ** k for k in range(-10, 11, 2)), "ridge strengths tried", gt=0),
    seed=Field(0, "seeds which rows are drawn as shots", ge=0),
)
SPLITS = _probe.SPLITS
check = _probe.check


def run(ctx, task) -> dict:
  from xmodal.evaluate import fewshot  # noqa: PLC0415
  name, train, test = _probe.read(ctx, task)
  ok = _probe.finite(train.z[name])
  shown = _probe.finite(test.z[name])
  num_classes = int(max(train.labels.max(), test.labels.max())) + 1
  result = fewshot.evaluate(train.z[name][ok], train.labels[ok], test.z[name][shown],
                            test.labels[shown], num_classes, tuple(task.shots),
                            tuple(task.l2), task.seed)
  # Rows with a non-finite embedding are misses: accuracy over every row of the split.
  return {**{k: v * shown.mean() for k, v in result.items()}, **test.counts()}


def score(metrics: dict) -> float | None:
  """Accuracy at the largest shot count."""
  shots = [(int(k.split("shot/")[0]), v) for k, v in metrics.items() if k.endswith("shot/top1")]
  return max(shots)[1] if shots else None
