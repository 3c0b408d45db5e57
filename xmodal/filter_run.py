"""`xmodal filter`: keep the rows whose two embeddings agree (DataComp's CLIP-score
filtering) and write them as a new manifest that `xmodal train` reads.

    xmodal filter --embeddings DIR --out kept.jsonl (--fraction 0.3 | --threshold 0.28)
                  [--pair image:text]

DIR is what `xmodal embed` wrote. A row's score is the cosine similarity of its embeddings
by the two towers of `--pair` (default: the two towers embedded); a row with a non-finite
embedding scores -inf and is never kept. `--threshold T` keeps scores >= T; `--fraction F`
keeps the ceil(F x N) best rows (ties broken by row order, so the result is the same every
time). The records are read again from the source the embeddings came from, and written
with their fields (image path, caption(s), label, ...) plus "similarity": a `.jsonl`
manifest needs image paths; a `.parquet` one also holds encoded images (webdataset,
ArrayRecord and Parquet sources). Train on it with `--config.data.source=manifest
--config.data.train_files=kept.jsonl`.
"""

import json
import math
import os

import ml_collections
import numpy as np

from xmodal import config as config_lib, embed_run
from xmodal.data import sources
from xmodal.evaluate import data as data_lib


def scores(a, b) -> np.ndarray:
  """Row-wise cosine similarity of unit embeddings a, b [N, D]; -inf where not finite."""
  with np.errstate(invalid="ignore", over="ignore"):
    s = np.sum(np.asarray(a, np.float64) * np.asarray(b, np.float64), axis=1)
  return np.where(np.isfinite(s), s, -np.inf)


def select(score, threshold: float | None = None, fraction: float | None = None) -> np.ndarray:
  """bool [N]: score >= threshold, or the ceil(fraction x N) highest (earlier rows first
  among equal scores); non-finite scores never."""
  score = np.asarray(score)
  if (threshold is None) == (fraction is None):
    raise config_lib.ConfigError("give exactly one of --threshold and --fraction")
  if threshold is not None:
    return np.isfinite(score) & (score >= threshold)
  if not 0 < fraction <= 1:
    raise config_lib.ConfigError(f"--fraction: must be in (0, 1], got {fraction}")
  keep = np.zeros(len(score), bool)
  order = np.argsort(-score, kind="stable")[:math.ceil(fraction * len(score))]
  keep[order] = True
  return keep & np.isfinite(score)


def _row(record: dict, similarity: float, jsonl: bool, where: str) -> dict:
  """A raw record as a manifest row: its public fields, JSON-ready for .jsonl."""
  row = {}
  for key, value in record.items():
    if key.startswith("_") or key in ("epoch", "source", "group"):
      continue
    if key == data_lib.IMAGE_FIELD and isinstance(value, np.ndarray):
      value = sources.image_bytes(value)          # pixels (the embedded dataset): a PNG
    elif isinstance(value, np.ndarray):
      value = value.tolist()
    elif isinstance(value, np.generic):
      value = value.item()
    if jsonl and isinstance(value, (bytes, bytearray)):
      raise config_lib.ConfigError(
          f"--out: {where} holds its {key!r} as encoded bytes, which a .jsonl manifest "
          f"cannot carry; write a .parquet manifest instead")
    row[key] = value
  row["similarity"] = float(similarity)
  return row


def write_manifest(rows: list[dict], path: str) -> None:
  tmp = path + ".tmp"
  if path.endswith(".parquet"):
    import pyarrow as pa  # noqa: PLC0415
    import pyarrow.parquet as pq  # noqa: PLC0415
    pq.write_table(pa.Table.from_pylist(rows), tmp)
  else:
    with open(tmp, "w", encoding="utf-8") as f:
      for row in rows:
        f.write(json.dumps(row, ensure_ascii=False) + "\n")
  os.replace(tmp, path)


def filter_embeddings(embeddings: str, out: str, pair: str | None = None,
                      threshold: float | None = None, fraction: float | None = None) -> dict:
  """Writes the kept rows of the embedded source to `out` (.jsonl or .parquet); returns
  {"rows", "kept", "threshold" (the lowest kept score)}."""
  if not (out.endswith(".jsonl") or out.endswith(".parquet")):
    raise config_lib.ConfigError(f"--out: {out!r} must end in .jsonl or .parquet")
  try:
    meta, emb = embed_run.read(embeddings)
  except FileNotFoundError as e:
    raise config_lib.ConfigError(f"--embeddings: {e}") from None
  towers = list(meta["towers"])
  a, b = pair.split(":") if pair else (towers + [None, None])[:2]
  if a not in towers or b not in towers or a == b:
    raise config_lib.ConfigError(f"--pair: {pair or 'the two towers'} must be 'a:b' of two "
                                 f"different embedded towers {towers}")
  score = scores(emb[a], emb[b])
  keep = select(score, threshold, fraction)
  config = ml_collections.ConfigDict(meta["config"])
  reader = data_lib.Reader(config, meta["split"])
  jsonl = out.endswith(".jsonl")
  rows = [_row(reader.source[int(i)], s, jsonl, f"{reader!r} row {int(i)}")
          for i, s in zip(emb["index"][keep], score[keep])]
  write_manifest(rows, out)
  return {"rows": len(score), "kept": int(keep.sum()),
          "threshold": float(score[keep].min()) if keep.any() else None}
