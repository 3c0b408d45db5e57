"""data.source="tfds": a tensorflow-datasets ArrayRecord build through tfds.data_source
(no TensorFlow; the `tfds` extra); the "pattern" is the split."""

import os

from xmodal.fields import ConfigError

READY, MIXABLE = False, True


def where(config, split):
  if split == "train":
    return "data.tfds_train_split", config.data.tfds_train_split
  return "data.tfds_eval_split", config.data.tfds_eval_split


def check(config, split, field=None, pattern=None):
  from xmodal.data import sources   # noqa: PLC0415
  d = config.data
  if field is None:
    field, pattern = where(config, split)
  why = f"when the {split} data is 'tfds'"
  if not d.tfds_name:
    raise ConfigError(f"config.data.tfds_name: required {why}")
  if not pattern:
    raise ConfigError(f"config.{field}: required {why}")
  try:
    sources.parse_keys(d.tfds_keys)
  except ValueError as e:
    raise ConfigError(f"config.data.tfds_keys: {e}") from None
  if d.tfds_data_dir and not os.path.isdir(os.path.expanduser(d.tfds_data_dir)):
    raise ConfigError(f"config.data.tfds_data_dir: no such folder {d.tfds_data_dir!r}")


def open(pattern, config, split):   # noqa: A001
  from xmodal.data import sources   # noqa: PLC0415
  d = config.data
  return sources.TfdsSource(d.tfds_name, pattern, d.tfds_data_dir, d.tfds_keys)
