"""data.source="shapes": the embedded procedural dataset (xmodal/data/shapes.py)."""

READY, MIXABLE = False, False


def where(config, split):
  return "data.source", ""


def check(config, split, field=None, pattern=None):
  pass


def open(pattern, config, split):   # noqa: A001
  from xmodal.data import shapes   # noqa: PLC0415
  d = config.data
  size = d.shapes_train_size if split == "train" else d.shapes_eval_size
  return shapes.ShapesSource(split, size, d.image_size)
