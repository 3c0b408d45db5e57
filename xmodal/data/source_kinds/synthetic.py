"""data.source="synthetic": generated pairs of latent classes for any towers, rendered by
each kind's `synthetic` (xmodal/data/synthetic.py); tower-ready."""

READY, MIXABLE = True, False


def where(config, split):
  return "data.source", ""


def check(config, split, field=None, pattern=None):
  pass


def open(pattern, config, split):   # noqa: A001
  from xmodal.data import synthetic   # noqa: PLC0415
  d = config.data
  size = d.synthetic_train_size if split == "train" else d.synthetic_eval_size
  return synthetic.SyntheticSource(config, split, size, d.synthetic_classes)
