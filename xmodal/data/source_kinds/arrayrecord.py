"""data.source="arrayrecord": ArrayRecord shards of xmodal records (xmodal/data/sources.py)."""

from xmodal.data.source_kinds import _files

READY, MIXABLE = False, True
where = _files.where


def check(config, split, field=None, pattern=None):
  if field is None:
    field, pattern = where(config, split)
  _files.check(field, pattern, "arrayrecord", split)


def open(pattern, config, split):   # noqa: A001
  from xmodal.data import sources   # noqa: PLC0415
  return sources.ArrayRecordSource(pattern)
