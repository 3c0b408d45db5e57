"""Zero-shot classification: class names x prompt templates -> one text embedding per class
(the mean of its prompts' embeddings, renormalised); an image's prediction is the most
similar class.

Class names: `classnames` (a file, one name a line, in label order), else those of the
built-in dataset `prompts` ("imagenet", "cifar10", ... : xmodal/evaluate/prompts.py), else
`config.eval.classnames`, else the data's own (the embedded `shapes`; a tfds build's
ClassLabel names, "_" read as a space). Templates:
`templates` (a built-in set by name, or a file, one template a line), else those of
`prompts`, else `config.eval.templates`. With none of `classnames`, `prompts`, `image` and
`text` set (the default task), a run without class names, labels or an image and a text
tower reports nothing for this task; a task that sets one of them and cannot run is an
error naming the field.

Metrics: "top1", "top5" (K <= classes, by `ks`), "chance" (1 / classes), "examples",
"skipped".
"""

import os

from xmodal.fields import ConfigError, Field


def _dataset_names():
  from xmodal.evaluate import prompts  # noqa: PLC0415
  return ("",) + prompts.dataset_names()


FIELDS = dict(
    prompts=Field("", "built-in class names and templates of a dataset ('imagenet', "
                  "'cifar10', ... CLIP's); '' = none", choices=_dataset_names),
    classnames=Field("", "a text file, one class name a line in label order; '' = prompts', "
                     "else config.eval.classnames, else the data's own"),
    templates=Field("", "a template set by name ('openai_imagenet', 'openai_imagenet_7', "
                    "'siglip') or a text file, one template with '{}' a line; '' = prompts', "
                    "else config.eval.templates"),
    image=Field("", "the image tower; '' = the 'vit' tower"),
    text=Field("", "the text tower; '' = the 'text' tower"),
    ks=Field((1, 5), "top-K accuracies reported (K up to the number of classes)", gt=0),
)
SPLITS = ("eval",)


def _explicit(task) -> bool:
  return bool(task.classnames or task.prompts or task.image or task.text)


def _read_lines(path: str) -> tuple[str, ...]:
  with open(os.path.expanduser(path), encoding="utf-8") as f:
    return tuple(line.strip() for line in f if line.strip())


def templates_of(config, task) -> tuple[str, ...]:
  from xmodal.evaluate import prompts  # noqa: PLC0415
  if task.templates:
    if task.templates in prompts.TEMPLATES:
      return prompts.TEMPLATES[task.templates]
    return _read_lines(task.templates)
  if task.prompts:
    return prompts.dataset_prompts(task.prompts)[1]
  return tuple(config.eval.templates)


def classnames_of(task_config, task) -> tuple | None:
  from xmodal.data import pipeline  # noqa: PLC0415
  from xmodal.evaluate import data as data_lib, prompts  # noqa: PLC0415
  if task.classnames:
    return _read_lines(task.classnames)
  if task.prompts:
    return prompts.dataset_prompts(task.prompts)[0]
  return pipeline.classnames(task_config) or data_lib.label_names(task_config)


def check(config, task, where: str) -> None:
  from xmodal.evaluate import prompts  # noqa: PLC0415
  if task.classnames and not os.path.isfile(os.path.expanduser(task.classnames)):
    raise ConfigError(f"config.{where}.classnames: no such file {task.classnames!r}")
  if (task.templates and task.templates not in prompts.TEMPLATES
      and not os.path.isfile(os.path.expanduser(task.templates))):
    raise ConfigError(f"config.{where}.templates: {task.templates!r} is neither a template "
                      f"set ({', '.join(prompts.TEMPLATES)}) nor a file")
  templates = templates_of(config, task)
  if not templates:
    raise ConfigError(f"config.{where}.templates: no templates")
  for template in templates:
    if "{}" not in template:
      raise ConfigError(f"config.{where}.templates: {template!r} has no '{{}}' for the class "
                        f"name")
  for field, kind in (("image", "vit"), ("text", "text")):
    name = task[field]
    if name and (name not in config.towers or config.towers[name].kind != kind):
      raise ConfigError(f"config.{where}.{field}: {name!r} is not a {kind!r} tower (towers: "
                        f"{ {m: t.kind for m, t in config.towers.items()} })")


def class_embeddings(ctx, text: str, classnames, templates):
  """[C, D] unit class embeddings; a class given as several names averages all of their
  prompts."""
  import numpy as np  # noqa: PLC0415
  from xmodal.evaluate import zeroshot  # noqa: PLC0415
  if all(isinstance(c, str) for c in classnames):
    return zeroshot.class_embeddings(lambda p: ctx.embed_texts(text, p), list(classnames),
                                     list(templates))
  prompts, owner = [], []
  for c, names in enumerate(classnames):
    for name in ((names,) if isinstance(names, str) else names):
      prompts += [zeroshot.prompt(t, name) for t in templates]
      owner += [c] * len(templates)
  z = ctx.embed_texts(text, prompts)
  total = np.zeros((len(classnames), z.shape[1]), np.float64)
  np.add.at(total, np.asarray(owner), z)
  total /= np.bincount(owner, minlength=len(classnames))[:, None]
  with np.errstate(invalid="ignore"):
    return (total / np.linalg.norm(total, axis=1, keepdims=True)).astype(np.float32)


def run(ctx, task) -> dict:
  import numpy as np  # noqa: PLC0415
  from xmodal.evaluate import zeroshot  # noqa: PLC0415
  from xmodal.evaluate.kinds import TaskError  # noqa: PLC0415
  kinds = {m: t.kind for m, t in ctx.config.towers.items()}
  counts = [list(kinds.values()).count(k) for k in ("vit", "text")]
  if not _explicit(task) and counts != [1, 1]:
    return {}                      # the default task on a model it does not fit
  image, text = ctx.tower(task, "image", "vit"), ctx.tower(task, "text", "text")
  names = classnames_of(ctx.task_config(task), task)
  if names is None:
    if not _explicit(task):
      return {}
    raise TaskError(f"config.{ctx.where}: no class names; set classnames (a file) or prompts")
  rows = ctx.embedded(task, "eval", (image,))
  labels = rows.labels
  if not np.all(labels >= 0):
    if not _explicit(task):
      return {}
    raise TaskError(f"config.{ctx.where}: {int(np.sum(labels < 0))} of {len(labels)} rows "
                    f"have no label (data.label_key / tfds_keys label=...)")
  if labels.max() >= len(names):
    field = (f"{ctx.where}.classnames" if task.classnames else f"{ctx.where}.prompts"
             if task.prompts else "eval.classnames")
    raise TaskError(f"config.{field}: {len(names)} class names, but the data has "
                    f"label {int(labels.max())}; give one name per class, in label order")
  class_emb = class_embeddings(ctx, text, names, templates_of(ctx.config, task))
  out = zeroshot.accuracy(rows.z[image], class_emb, labels, tuple(task.ks))
  out["chance"] = 1.0 / len(names)
  out.update(rows.counts())
  return out


def score(metrics: dict) -> float | None:
  return metrics.get("top1")
