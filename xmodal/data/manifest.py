"""Manifest datasets: a JSONL or CSV file of (image path, caption[, label]) rows.

JSONL: one object a line, e.g. {"image": "imgs/0001.jpg", "caption": "a dog", "label": 3}.
CSV: a header row naming the columns. Column names are set by `data.image_key`,
`data.caption_key` and `data.label_key`. Relative image paths resolve against the
manifest's folder. Rows are read eagerly (paths and captions only); images are read later
by the pipeline, where an unreadable one is skipped and counted.
"""

import csv
import glob
import json
import os


class ManifestError(ValueError):
  """A manifest file cannot be used; the message names the file and line."""


def read_rows(path: str, image_key: str, caption_key: str, label_key: str) -> list[dict]:
  """One manifest file -> [{"image": abs path, "caption": str, "label": int (or -1)}]."""
  folder = os.path.dirname(os.path.abspath(path))
  if path.endswith(".jsonl") or path.endswith(".json"):
    with open(path, encoding="utf-8") as f:
      raw = []
      for line_no, line in enumerate(f, 1):
        if not line.strip():
          continue
        try:
          raw.append((line_no, json.loads(line)))
        except json.JSONDecodeError as e:
          raise ManifestError(f"{path}:{line_no}: not valid JSON ({e.msg})") from None
  elif path.endswith(".csv") or path.endswith(".tsv"):
    with open(path, encoding="utf-8", newline="") as f:
      reader = csv.DictReader(f, delimiter="\t" if path.endswith(".tsv") else ",")
      raw = [(line_no, row) for line_no, row in enumerate(reader, 2)]
  else:
    raise ManifestError(f"{path}: manifest must end in .jsonl, .csv or .tsv")
  rows = []
  for line_no, row in raw:
    for key in (image_key, caption_key):
      if key not in row:
        raise ManifestError(f"{path}:{line_no}: row has no {key!r} column (columns: "
                            f"{sorted(row)}); set config.data.image_key / caption_key")
    label = row.get(label_key, "")
    rows.append({
        "image": os.path.join(folder, row[image_key]),
        "caption": row[caption_key] if row[caption_key] is not None else "",
        "label": int(label) if str(label).strip() != "" else -1,
    })
  return rows


class ManifestSource:
  """A grain random-access source over the rows of one or more manifests (a glob)."""

  def __init__(self, pattern: str, image_key="image", caption_key="caption", label_key="label"):
    paths = sorted(glob.glob(os.path.expanduser(pattern)))
    if not paths:
      raise ManifestError(f"no manifest file matches {pattern!r}")
    self.rows = [r for p in paths for r in read_rows(p, image_key, caption_key, label_key)]
    if not self.rows:
      raise ManifestError(f"manifest {pattern!r} has no rows")
    self.pattern = pattern

  def __len__(self) -> int:
    return len(self.rows)

  def __getitem__(self, index: int) -> dict:
    return dict(self.rows[index])

  def __repr__(self):
    return f"ManifestSource({self.pattern!r}, {len(self.rows)} rows)"
