"""data.source="manifest": JSONL / CSV / TSV / Parquet rows (xmodal/data/manifest.py);
the pattern is data.train_files (or the older data.train_manifest)."""

from xmodal.data.source_kinds import _files

READY, MIXABLE = False, True


def where(config, split):
  d = config.data
  files, legacy = (d.train_files, d.train_manifest) if split == "train" else (
      d.eval_files, d.eval_manifest)
  if files or not legacy:
    return _files.where(config, split)
  return ("data.train_manifest" if split == "train" else "data.eval_manifest"), legacy


def check(config, split, field=None, pattern=None):
  if field is None:
    field, pattern = where(config, split)
  _files.check(field, pattern, "manifest", split)


def open(pattern, config, split):   # noqa: A001
  from xmodal.data import manifest, pipeline   # noqa: PLC0415
  d = config.data
  return manifest.ManifestSource(pattern, d.image_key, d.caption_key, d.label_key,
                                 pipeline.required_fields(config))
