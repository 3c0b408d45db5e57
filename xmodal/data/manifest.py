"""Manifest datasets: JSONL, CSV/TSV or Parquet files of (image, caption[, label]) rows.

JSONL: one object a line, e.g. {"image": "imgs/0001.jpg", "caption": "a dog", "label": 3};
the caption may also be a list of captions ({"caption": ["a dog", "a brown dog"]}).
CSV/TSV: a header row naming the columns. Parquet: columns of the same names; the image
column holds a path (string), the encoded image itself (binary), or a Hugging Face
`datasets`-style struct {"bytes": ..., "path": ...}; a list column holds several captions.
Column names are set by `data.image_key`, `data.caption_key` and `data.label_key`.
Relative image paths resolve against the manifest's folder. Rows are read eagerly (image
bytes of a Parquet file included: for corpora larger than memory, convert them to
ArrayRecord with tools/convert_to_arrayrecord.py); images are decoded later by the
pipeline, where an unreadable or missing one is skipped and counted.
"""

import csv
import json
import os

from xmodal.data import bad, sources


class ManifestError(ValueError):
  """A manifest file cannot be used; the message names the file and line."""


def _jsonl_rows(path: str) -> list[tuple[int, dict]]:
  """(line number, row) per non-empty line; a line that is not UTF-8 or not a JSON object
  becomes a bad row naming the file and line (skipped and counted, not fatal)."""
  out = []
  with open(path, "rb") as f:
    for line_no, raw in enumerate(f, 1):
      if not raw.strip():
        continue
      try:
        line = raw.decode("utf-8")
      except UnicodeDecodeError as e:
        out.append((line_no, bad.bad("not_utf8", f"{path}:{line_no}: not UTF-8 ({e.reason} "
                                     f"at byte {e.start})")))
        continue
      try:
        row = json.loads(line)
      except json.JSONDecodeError as e:
        out.append((line_no, bad.bad("bad_row", f"{path}:{line_no}: not valid JSON ({e.msg})")))
        continue
      if not isinstance(row, dict):
        out.append((line_no, bad.bad("bad_row", f"{path}:{line_no}: not a JSON object")))
        continue
      out.append((line_no, row))
  return out


def _csv_rows(path: str) -> list[tuple[int, dict]]:
  """(line number, row) per CSV/TSV row after the header. Bytes that are not UTF-8 are
  kept as surrogate escapes and their row becomes a bad row naming file and line."""
  with open(path, encoding="utf-8", errors="surrogateescape", newline="") as f:
    reader = csv.DictReader(f, delimiter="\t" if path.endswith(".tsv") else ",")
    out = []
    for row in reader:
      line_no = reader.line_num
      if not _is_utf8(list(row.keys()) + list(row.values())):
        out.append((line_no, bad.bad("not_utf8", f"{path}:{line_no}: not UTF-8")))
      else:
        out.append((line_no, row))
    return out


def _is_utf8(values) -> bool:
  for v in values:
    if isinstance(v, str):
      try:
        v.encode("utf-8")
      except UnicodeEncodeError:
        return False
  return True


def read_rows(path: str, image_key: str, caption_key: str, label_key: str) -> list[dict]:
  """One manifest file -> [{"image": abs path, "caption": str, "label": int (or -1)}], with
  a bad record ({"_bad": "FILE:LINE: why", "_reason": ...}) for each row that cannot be
  used (broken JSON, not UTF-8, a missing column, a label that is not an integer)."""
  folder = os.path.dirname(os.path.abspath(path))
  if path.endswith(".jsonl") or path.endswith(".json"):
    raw = _jsonl_rows(path)
  elif path.endswith(".parquet"):
    return _read_parquet(path, folder, image_key, caption_key, label_key)
  elif path.endswith(".csv") or path.endswith(".tsv"):
    raw = _csv_rows(path)
  else:
    raise ManifestError(f"{path}: manifest must end in .jsonl, .json, .csv, .tsv or .parquet")
  good = [(n, r) for n, r in raw if "_bad" not in r]
  for key in (image_key, caption_key):
    if good and not any(key in row for _, row in good):
      line_no, row = good[0]
      raise ManifestError(f"{path}:{line_no}: row has no {key!r} column (columns: "
                          f"{sorted(row)}); set config.data.image_key / caption_key")
  rows = []
  for line_no, row in raw:
    missing = [k for k in (image_key, caption_key) if k not in row]
    if "_bad" in row:
      rows.append(row)
    elif missing:
      rows.append(bad.bad("missing_field", f"{path}:{line_no}: no {missing[0]!r} column"))
    else:
      rows.append(_row(path, line_no, folder, row[image_key], row[caption_key],
                       row.get(label_key, "")))
  return rows


def _row(path, line_no, folder, image, caption, label) -> dict:
  if isinstance(image, dict):                      # {"bytes": ..., "path": ...}
    image = image.get("bytes") or image.get("path") or ""
  if isinstance(image, str):
    image = os.path.join(folder, image)
  try:
    label = int(label) if label is not None and str(label).strip() != "" else -1
  except ValueError:
    return bad.bad("bad_row", f"{path}:{line_no}: label {label!r} is not an integer")
  return {"image": image, "caption": caption if caption is not None else "", "label": label,
          "_where": f"{path}:{line_no}"}


def _read_parquet(path, folder, image_key, caption_key, label_key) -> list[dict]:
  import pyarrow.parquet as pq
  names = pq.read_schema(path).names
  for key in (image_key, caption_key):
    if key not in names:
      raise ManifestError(f"{path}: no {key!r} column (columns: {sorted(names)}); set "
                          f"config.data.image_key / caption_key")
  columns = [image_key, caption_key] + ([label_key] if label_key in names else [])
  table = pq.read_table(path, columns=columns).to_pydict()
  labels = table.get(label_key, [None] * len(table[image_key]))
  return [_row(path, i + 1, folder, image, caption, label)
          for i, (image, caption, label) in enumerate(
              zip(table[image_key], table[caption_key], labels))]


class ManifestSource:
  """A grain random-access source over the rows of one or more manifests (a glob or brace
  pattern, several separated by ";")."""

  def __init__(self, pattern: str, image_key="image", caption_key="caption", label_key="label"):
    try:
      paths = sources.expand_pattern(pattern)
    except sources.SourceError:
      raise ManifestError(f"no manifest file matches {pattern!r}") from None
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
