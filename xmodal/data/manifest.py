"""Manifest datasets: JSONL, CSV/TSV or Parquet files of records, one a row: any columns
(an image path, a caption, an audio file, a vector, ...; each tower's `field` names the
column it reads), e.g. (image, caption[, label]) for the image/text towers.

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


def read_rows(path: str, image_key: str = "image", caption_key: str = "caption",
              label_key: str = "label", required=None) -> list[dict]:
  """One manifest file -> one record per row: every column, with `image_key` renamed
  "image", `caption_key` "caption" and `label_key` "label" (int, -1 = none); relative
  image paths resolved against the manifest's folder. A row that cannot be used (broken
  JSON, not UTF-8, a label that is not an integer, a missing required column) is a bad
  record naming the file and line. `required`: the record fields the towers read
  (default image and caption); a file where no row has one is a ManifestError."""
  required = ("image", "caption") if required is None else tuple(required)
  rename = {image_key: "image", caption_key: "caption", label_key: "label"}
  if path.endswith(".jsonl") or path.endswith(".json"):
    raw = _jsonl_rows(path)
  elif path.endswith(".parquet"):
    raw = _parquet_rows(path)
  elif path.endswith(".csv") or path.endswith(".tsv"):
    raw = _csv_rows(path)
  else:
    raise ManifestError(f"{path}: manifest must end in .jsonl, .json, .csv, .tsv or .parquet")
  columns = {v: k for k, v in rename.items()}
  good = [(n, r) for n, r in raw if "_bad" not in r]
  for field in required:
    column = columns.get(field, field)
    if good and not any(column in row for _, row in good):
      line_no, row = good[0]
      raise ManifestError(f"{path}:{line_no}: row has no {column!r} column (columns: "
                          f"{sorted(row)}); set config.data.image_key / caption_key or the "
                          f"tower's field")
  folder = os.path.dirname(os.path.abspath(path))
  rows = []
  for line_no, row in raw:
    if "_bad" in row:
      rows.append(row)
      continue
    record = {rename.get(k, k): v for k, v in row.items()}
    missing = [columns.get(f, f) for f in required if f not in record]
    if missing:
      rows.append(bad.bad("missing_field", f"{path}:{line_no}: no {missing[0]!r} column"))
      continue
    rows.append(_row(path, line_no, folder, record))
  return rows


def _row(path, line_no, folder, record) -> dict:
  image = record.get("image")
  if isinstance(image, dict):                      # {"bytes": ..., "path": ...}
    image = image.get("bytes") or image.get("path") or ""
  if isinstance(image, str):
    record["image"] = os.path.join(folder, image)
  elif image is not None:
    record["image"] = image
  label = record.get("label")
  try:
    record["label"] = int(label) if label is not None and str(label).strip() != "" else -1
  except (ValueError, TypeError):
    return bad.bad("bad_row", f"{path}:{line_no}: label {label!r} is not an integer")
  if record.get("caption", "") is None:
    record["caption"] = ""
  record["_file"], record["_line"] = path, line_no     # for messages (one shared path string)
  return record


def _parquet_rows(path) -> list[tuple[int, dict]]:
  """(row number, row) per Parquet row. List columns of numbers (vectors, signals) come
  out as one numpy array per row, so they are not converted element by element later."""
  import numpy as np
  import pyarrow as pa
  import pyarrow.parquet as pq
  table = pq.read_table(path)
  columns = {}
  for name in table.column_names:
    col = table.column(name).combine_chunks()
    kind = col.type
    if (pa.types.is_list(kind) or pa.types.is_large_list(kind) or
        pa.types.is_fixed_size_list(kind)) and (pa.types.is_integer(kind.value_type) or
                                                pa.types.is_floating(kind.value_type)):
      values = np.asarray(col.values.to_numpy(zero_copy_only=False))
      offsets = np.asarray(col.offsets) if not pa.types.is_fixed_size_list(kind) else (
          (col.offset + np.arange(len(col) + 1)) * kind.list_size)
      nulls = col.is_null().to_numpy(zero_copy_only=False)
      columns[name] = [None if nulls[i] else values[offsets[i]:offsets[i + 1]]
                       for i in range(len(col))]
    else:
      columns[name] = col.to_pylist()
  n = table.num_rows
  return [(i + 1, {k: v[i] for k, v in columns.items()}) for i in range(n)]


class ManifestSource:
  """A grain random-access source over the rows of one or more manifests (a glob or brace
  pattern, several separated by ";"). Record i: the row's columns (see `read_rows`), plus
  "_where" ("FILE:LINE", for messages) and "_dir" (the manifest's folder: relative paths in
  other columns resolve against it)."""

  def __init__(self, pattern: str, image_key="image", caption_key="caption", label_key="label",
               required=None):
    try:
      paths = sources.expand_pattern(pattern)
    except sources.SourceError:
      raise ManifestError(f"no manifest file matches {pattern!r}") from None
    self.rows = [r for p in paths
                 for r in read_rows(p, image_key, caption_key, label_key, required)]
    if not self.rows:
      raise ManifestError(f"manifest {pattern!r} has no rows")
    self.pattern = pattern

  def __len__(self) -> int:
    return len(self.rows)

  def __getitem__(self, index: int) -> dict:
    record = dict(self.rows[index])
    if "_file" in record:
      path = record.pop("_file")
      record["_where"] = f"{path}:{record.pop('_line')}"
      record["_dir"] = os.path.dirname(os.path.abspath(path))
    return record

  def __repr__(self):
    return f"ManifestSource({self.pattern!r}, {len(self.rows)} rows)"
