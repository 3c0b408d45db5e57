"""k-nearest-neighbour probes on one tower's frozen embeddings (xmodal/evaluate/knn.py):
evaluation rows against the training split's, by cosine similarity.

`target="label"`: classification by a vote of the k nearest, each weighted
exp(similarity / temperature) (DINO's weighted kNN). Any other `target` names a record
field holding a number or a vector per row (gene expression, HESCAPE-style): the
prediction is the mean of the k nearest rows' targets, scored by the Pearson correlation
across rows (averaged over target dimensions) and the mean squared error.

Metrics: classification "top1"; regression "pearson", "mse"; "examples", "skipped".
Evaluation rows with a non-finite embedding are misses (classification) or left out
(regression; counted in eval/nonfinite).
"""

from xmodal.evaluate.kinds import _probe
from xmodal.fields import Field

FIELDS = dict(
    **_probe.FIELDS,
    k=Field(20, "neighbours", gt=0),
    temperature=Field(0.07, "classification: vote weight exp(similarity / temperature)", gt=0),
    target=Field("label", "'label' (classify) or a record field with a number or vector per "
                 "row (regress it)"),
)
SPLITS = _probe.SPLITS
check = _probe.check


def run(ctx, task) -> dict:
  import numpy as np  # noqa: PLC0415
  from xmodal.evaluate import knn  # noqa: PLC0415
  classify = task.target == "label"
  fields = () if classify else (task.target,)
  name, train, test = _probe.read(ctx, task, labels=classify, fields=fields)
  ok, shown = _probe.finite(train.z[name]), _probe.finite(test.z[name])
  ref, queries = train.z[name][ok], test.z[name][shown]
  if classify:
    num_classes = int(max(train.labels.max(), test.labels.max())) + 1
    pred = knn.classify(queries, ref, train.labels[ok], num_classes, task.k, task.temperature)
    out = {"top1": float(np.sum(pred == test.labels[shown]) / len(test))}
  else:
    targets = np.asarray(train.fields[task.target], np.float64).reshape(len(train), -1)
    truth = np.asarray(test.fields[task.target], np.float64).reshape(len(test), -1)
    out = knn.regression_metrics(knn.regress(queries, ref, targets[ok], task.k), truth[shown])
  return {**out, **test.counts()}


def score(metrics: dict) -> float | None:
  return metrics.get("top1", metrics.get("pearson"))
