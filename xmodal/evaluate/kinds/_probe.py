"""What the probe kinds (linear_probe, fewshot, knn) share: the tower they probe, how many
training rows they fit on, and reading both splits of a task's data.

A probe fits on the training split of the task's data (`data.train_files`,
`data.tfds_train_split`, the embedded dataset's training split, ...) and scores the
evaluation split. Rows whose embedding is not finite never help: they are left out of the
fit, and an evaluation row with one counts as a miss.
"""

from xmodal.fields import ConfigError, Field

FIELDS = dict(
    tower=Field("", "the tower whose embeddings are probed; '' = the 'vit' tower, else the "
                "first tower"),
    train_examples=Field(0, "rows of the training split fitted on (a seeded random subset, "
                         "the same every time); 0 = all", ge=0),
)
SPLITS = ("train", "eval")


def check(config, task, where: str) -> None:
  if task.tower and task.tower not in config.towers:
    raise ConfigError(f"config.{where}.tower: no tower {task.tower!r} (towers: "
                      f"{list(config.towers)})")


def tower(ctx, task) -> str:
  if task.tower:
    return ctx.tower(task, "tower")
  kinds = [m for m, t in ctx.config.towers.items() if t.kind == "vit"]
  return kinds[0] if len(kinds) == 1 else next(iter(ctx.config.towers))


def read(ctx, task, labels: bool = True, fields=()):
  """(train, test) `Embedded` splits of the probed tower; with `labels`, TaskError unless
  every row of both has one."""
  import numpy as np  # noqa: PLC0415
  from xmodal.evaluate.kinds import TaskError  # noqa: PLC0415
  name = tower(ctx, task)
  train = ctx.embedded(task, "train", (name,), fields, limit=task.train_examples)
  test = ctx.embedded(task, "eval", (name,), fields)
  if labels:
    for split, rows in (("train", train), ("eval", test)):
      if not np.all(rows.labels >= 0):
        raise TaskError(f"config.{ctx.where}: {int(np.sum(rows.labels < 0))} of {len(rows)} "
                        f"rows of the {split} split have no label (data.label_key, or "
                        f"label=... in data.tfds_keys)")
  return name, train, test


def finite(x):
  """Rows of x [N, D] whose values are all finite: bool [N]."""
  import numpy as np  # noqa: PLC0415
  return np.all(np.isfinite(x), axis=1)
