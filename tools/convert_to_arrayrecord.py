"""Converts an image-caption corpus to ArrayRecord shards of "xmodal record v1" records
(see xmodal/data/sources.py), the format `data.source="arrayrecord"` reads.

    python tools/convert_to_arrayrecord.py --input 'webdataset:/data/cc/{00000..00127}.tar' \\
        --output /data/cc_ar/train --records_per_shard 10000 --processes 8

--input is KIND:PATTERN with KIND one of
  folder      a folder, searched recursively, of images (.jpg .jpeg .png .webp) each with a
              caption file next to it: same name, .txt (one caption a line: several lines =
              several captions); an optional same-name .json may hold {"label": int}.
  manifest    JSONL / CSV / TSV / Parquet manifests (brace/glob pattern), columns set by
              --image_key / --caption_key / --label_key.
  webdataset  tar shards (brace/glob pattern): {key}.jpg|png|webp + {key}.txt [+ .json, .cls].
  tfds        NAME or NAME:SPLIT (default split "train") of a tensorflow-datasets ArrayRecord
              build under --tfds_data_dir, read through `tfds.data_source` (no TensorFlow);
              features mapped by --tfds_keys as for `data.tfds_keys`, e.g.
              "image=image,caption=captions/text,label=label".

Output: {output}-{i:05d}-of-{n:05d}.arrayrecord, each holding --records_per_shard input rows
(in input order; the training pipeline shuffles globally), with a {shard}.json of its
counts beside it, and {output}-summary.json at the end. Shards are written in parallel
(--processes) to a temporary name and renamed when complete, so a rerun after a crash or
Ctrl-C skips finished shards and redoes only the others (same --input and
--records_per_shard give the same shard boundaries).

--fields names the record fields to write (default image,caption): any manifest columns or
webdataset members, e.g. --fields audio,video,vector,caption; a field naming a file is
stored as that file's bytes, a list of numbers as a numpy array, so records are
self-contained.

Rows that cannot be used are skipped and counted by reason: missing or unreadable image,
an image whose header holds more than --max_image_pixels pixels (checked before decoding;
default 64M as data.max_image_pixels, 0 = no limit), empty or non-UTF-8 caption, a sample
without an image or caption, a truncated tar member.
--max_image_size N re-encodes (JPEG, quality 95) images whose longer side exceeds N; a
transparent image is then composited onto --background (R,G,B, default white, as
data.alpha_background) first, since JPEG has no alpha. Images with transparency that are
kept as stored are counted ("with transparency": training composites them onto
data.alpha_background).
"""

import argparse
import collections
import io
import json
import multiprocessing
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from xmodal.data import manifest, sources, transforms  # noqa: E402

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")


class FolderSource:
  """Images under a folder, each with a same-name .txt caption file (and optional .json)."""

  def __init__(self, folder: str):
    folder = os.path.expanduser(folder)
    if not os.path.isdir(folder):
      raise sources.SourceError(f"folder {folder!r} does not exist")
    self.images = sorted(
        os.path.join(root, name) for root, _, names in os.walk(folder) for name in names
        if name.lower().endswith(IMAGE_SUFFIXES))
    if not self.images:
      raise sources.SourceError(f"no image ({', '.join(IMAGE_SUFFIXES)}) under {folder!r}")

  def __len__(self):
    return len(self.images)

  def __getitem__(self, i):
    path = self.images[i]
    stem = os.path.splitext(path)[0]
    try:
      with open(stem + ".txt", "rb") as f:
        text = f.read()
    except OSError:
      return {"_bad": f"no caption: {stem}.txt missing"}
    label = -1
    if os.path.exists(stem + ".json"):
      try:
        with open(stem + ".json") as f:
          label = int(json.load(f).get("label", -1))
      except (OSError, ValueError, AttributeError, TypeError):
        pass
    try:
      lines = [line for line in text.decode("utf-8").splitlines() if line.strip()]
    except UnicodeDecodeError:
      lines = text                      # left as bytes: the row is counted as non-UTF-8
    return {"image": path, "caption": lines, "label": label,
            "key": os.path.relpath(stem, os.path.dirname(self.images[0]))}


def open_input(spec: str, args):
  kind, _, pattern = spec.partition(":")
  fields = tuple(f.strip() for f in args.fields.split(",") if f.strip())
  if kind == "folder":
    return FolderSource(pattern)
  if kind == "manifest":
    return manifest.ManifestSource(pattern, args.image_key, args.caption_key, args.label_key,
                                   fields)
  if kind == "webdataset":
    return sources.WebDatasetSource(pattern, args.caption_key, args.label_key, fields)
  if kind == "tfds" and pattern:
    name, _, split = pattern.partition(":")
    return sources.TfdsSource(name, split or "train", args.tfds_data_dir, args.tfds_keys)
  raise SystemExit(f"--input: expected folder:PATH, manifest:PATTERN, webdataset:PATTERN or "
                   f"tfds:NAME[:SPLIT], got {spec!r}")


def clean_captions(caption):
  """-> (str or [str], None) or (None, reason)."""
  items = caption if isinstance(caption, (list, tuple)) else [caption]
  good, why = [], "empty caption"
  for c in items:
    if isinstance(c, bytes):
      try:
        c = c.decode("utf-8")
      except UnicodeDecodeError:
        why = "caption not UTF-8"
        continue
    if isinstance(c, str) and c.strip():
      try:
        c.encode("utf-8")             # a lone surrogate ("\ud800" in JSON) is not UTF-8
      except UnicodeEncodeError:
        why = "caption not UTF-8"
        continue
      good.append(c.strip())
  if not good:
    return None, why
  return (good[0] if len(good) == 1 else good), None


def load_image(image, max_size: int, max_pixels: int = 0,
               background=transforms.WHITE) -> tuple[bytes | None, str | None, str | None]:
  """-> (encoded bytes, None, note) or (None, reason, None); note is "alpha composited"
  (re-encoded over `background`), "with transparency" (kept as stored) or None.
  Re-encodes if larger than max_size; refuses more than max_pixels (0 = no limit) from the
  header, before decoding."""
  from PIL import Image
  try:
    data = sources.image_bytes(image)
  except OSError:
    return None, "missing image file", None
  note = None
  try:
    img = Image.open(io.BytesIO(data))
    if img.format not in ("JPEG", "PNG", "WEBP"):
      return None, f"unsupported image format {img.format}", None
    transforms.check_pixels(*img.size, max_pixels)
    alpha = transforms.has_alpha(img)
    if max_size and max(img.size) > max_size:
      img.draft("RGB", (max_size, max_size))
      img = transforms.to_rgb(img, background)
      img.thumbnail((max_size, max_size), Image.BICUBIC)
      buf = io.BytesIO()
      img.save(buf, "JPEG", quality=95)
      data = buf.getvalue()
      note = "alpha composited" if alpha else None
    else:
      img.verify()                       # checks the file's structure without decoding
      note = "with transparency" if alpha else None
  except transforms.ImageTooLarge:
    return None, "image over --max_image_pixels", None
  except Exception:  # PIL raises many types for broken files.
    return None, "unreadable image", None
  return data, None, note


def load_field(rec: dict, field: str):
  """A field other than image / caption -> what the record stores: the bytes of a file it
  names (a relative path resolves against the manifest's folder), a numpy array for a
  list of numbers, anything else as it is. -> (value, None) or (None, reason)."""
  import numpy as np
  value = rec[field]
  if isinstance(value, str):
    path = os.path.join(rec.get("_dir", ""), value)
    if not os.path.isfile(path):
      return None, f"missing {field} file"
    with open(path, "rb") as f:
      return f.read(), None
  if isinstance(value, (list, tuple)) and value and not isinstance(value[0], (str, bytes)):
    try:
      return np.asarray(value, np.float32), None
    except (TypeError, ValueError):
      return None, f"{field} is not a numeric list"
  return value, None


_SOURCE = None
_FIELDS = ("image", "caption")


def _init_worker(source, fields=("image", "caption")):
  global _SOURCE, _FIELDS
  _SOURCE, _FIELDS = source, fields


def shard_name(output: str, i: int, n: int) -> str:
  return f"{output}-{i:05d}-of-{n:05d}.arrayrecord"


def write_shard(task) -> dict:
  """Writes shard i (rows start..end) via a temporary file; returns its counts."""
  from array_record.python import array_record_module
  i, n, start, end, output, max_size, max_pixels, background = task
  final = shard_name(output, i, n)
  tmp = final + ".tmp"
  written, skipped, notes, examples = 0, collections.Counter(), collections.Counter(), []
  writer = array_record_module.ArrayRecordWriter(tmp, "group_size:1")
  try:
    for row in range(start, end):
      rec = _SOURCE[row]
      reason = None
      if "_bad" in rec:
        reason = ("truncated tar member" if ("cut short" in rec["_bad"] or
                                             rec.get("_reason") == "truncated") else
                  "no image in sample" if "no image" in rec["_bad"] else
                  "no caption" if "no caption" in rec["_bad"] else
                  rec.get("_reason", "unreadable row").replace("_", " "))
        detail = rec["_bad"]
      else:
        out, detail = {}, f"row {row}: {rec.get('_where', '')}"
        for field in _FIELDS:
          if field == "caption":
            out[field], reason = clean_captions(rec["caption"])
          elif field == "image":
            out[field], reason, note = load_image(rec["image"], max_size, max_pixels,
                                                  background)
            if note:
              notes[note] += 1
            detail = f"row {row}: {rec['image'] if isinstance(rec['image'], str) else ''}"
          else:
            out[field], reason = load_field(rec, field)
          if reason:
            break
      if reason:
        skipped[reason] += 1
        if len(examples) < 5:
          examples.append(f"{reason}: {detail}")
        continue
      writer.write(sources.encode_fields({**out, "label": int(rec.get("label", -1)),
                                          "key": str(rec.get("key", row))}))
      written += 1
  finally:
    writer.close()
  stats = {"shard": os.path.basename(final), "rows": end - start, "written": written,
           "skipped": dict(skipped), "images": dict(notes), "skip_examples": examples}
  with open(final + ".json", "w") as f:
    json.dump(stats, f, indent=1)
  os.replace(tmp, final)                 # the shard exists only once it is complete
  return stats


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--input", required=True, help="folder:PATH | manifest:PATTERN | "
                      "webdataset:PATTERN | tfds:NAME[:SPLIT]")
  parser.add_argument("--output", required=True, help="output prefix, e.g. /data/ar/train")
  parser.add_argument("--records_per_shard", type=int, default=10_000)
  parser.add_argument("--processes", type=int, default=os.cpu_count())
  parser.add_argument("--max_image_size", type=int, default=0, help="0 = keep as stored")
  parser.add_argument("--max_image_pixels", type=int, default=64_000_000,
                      help="skip images whose header holds more pixels; 0 = no limit")
  parser.add_argument("--background", default="255,255,255",
                      help="R,G,B that transparent images are composited onto when re-encoded")
  parser.add_argument("--image_key", default="image")
  parser.add_argument("--caption_key", default="caption")
  parser.add_argument("--label_key", default="label")
  parser.add_argument("--fields", default="image,caption", help="record fields to write, "
                      "e.g. 'audio,video,vector,caption' (files named by other fields are "
                      "stored as bytes, lists of numbers as arrays)")
  parser.add_argument("--tfds_data_dir", default="", help="tfds input: the data_dir")
  parser.add_argument("--tfds_keys", default="", help="tfds input: ROLE=FEATURE,... "
                      "(roles image, caption, label; '/' for nested features)")
  args = parser.parse_args(argv)
  background = tuple(int(c) for c in args.background.split(",") if c.strip().isdigit())
  if len(background) != 3 or max(background) > 255:
    parser.error(f"--background: expected R,G,B with values in 0..255, got {args.background!r}")

  t0 = time.time()
  source = open_input(args.input, args)
  total = len(source)
  n = max(1, -(-total // args.records_per_shard))
  os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
  tasks, done = [], []
  for i in range(n):
    start, end = i * args.records_per_shard, min(total, (i + 1) * args.records_per_shard)
    final = shard_name(args.output, i, n)
    if os.path.exists(final) and os.path.exists(final + ".json"):
      with open(final + ".json") as f:
        done.append(json.load(f))
    else:
      tasks.append((i, n, start, end, args.output, args.max_image_size,
                    args.max_image_pixels, background))
  print(f"{args.input}: {total} rows -> {n} shards of <= {args.records_per_shard}; "
        f"{len(done)} already done, {len(tasks)} to write with {args.processes} processes",
        flush=True)
  results = list(done)
  if tasks:
    ctx = multiprocessing.get_context("fork")
    fields = tuple(f.strip() for f in args.fields.split(",") if f.strip())
    with ctx.Pool(max(1, min(args.processes, len(tasks))), initializer=_init_worker,
                  initargs=(source, fields)) as pool:
      rows_done = 0
      for k, stats in enumerate(pool.imap_unordered(write_shard, tasks), 1):
        results.append(stats)
        rows_done += stats["rows"]
        rate = rows_done / max(time.time() - t0, 1e-9)
        print(f"[{k}/{len(tasks)}] {stats['shard']}: {stats['written']} written, "
              f"{sum(stats['skipped'].values())} skipped ({rate:.0f} rows/s)", flush=True)
  skipped, notes = collections.Counter(), collections.Counter()
  for s in results:
    skipped.update(s["skipped"])
    notes.update(s.get("images", {}))
  summary = {"input": args.input, "rows": total, "shards": n,
             "written": sum(s["written"] for s in results), "skipped": dict(skipped),
             "images": dict(notes),
             "skip_examples": [e for s in results for e in s["skip_examples"]][:20],
             "seconds": round(time.time() - t0, 1), "format": sources.RECORD_FORMAT}
  with open(f"{args.output}-summary.json", "w") as f:
    json.dump(summary, f, indent=1)
  print(f"done: {summary['written']} records in {n} shards, {sum(skipped.values())} rows "
        f"skipped in {summary['seconds']} s", flush=True)
  for reason, count in skipped.most_common():
    print(f"  skipped {count:>8}  {reason}")
  for note, count in notes.most_common():
    print(f"  written {count:>8}  {note}")
  for example in summary["skip_examples"][:5]:
    print(f"    e.g. {example}")
  return summary


if __name__ == "__main__":
  main()
