"""data.source="features": cached features (.npz of tools/cache_features.py), tower-ready."""

from xmodal.data.source_kinds import _files

READY, MIXABLE = True, False
where = _files.where


def check(config, split, field=None, pattern=None):
  if field is None:
    field, pattern = where(config, split)
  _files.check(field, pattern, "features", split)


def open(pattern, config, split):   # noqa: A001
  from xmodal.data import sources   # noqa: PLC0415
  return sources.FeaturesSource(pattern)
