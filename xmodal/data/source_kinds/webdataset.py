"""data.source="webdataset": tar shards of `key.ext` members (xmodal/data/sources.py)."""

from xmodal.data.source_kinds import _files

READY, MIXABLE = False, True
where = _files.where


def check(config, split, field=None, pattern=None):
  if field is None:
    field, pattern = where(config, split)
  _files.check(field, pattern, "webdataset", split)


def open(pattern, config, split):   # noqa: A001 (the contract's name)
  from xmodal.data import pipeline, sources   # noqa: PLC0415
  d = config.data
  return sources.WebDatasetSource(pattern, d.caption_key, d.label_key,
                                  pipeline.required_fields(config))
