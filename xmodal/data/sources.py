"""Random-access grain sources over real corpora: webdataset tars, ArrayRecord shards and
tensorflow-datasets builds (manifests live in `manifest.py`, the embedded dataset in
`shapes.py`).

Every source maps an index to a *raw record*, a dict

    {"image": encoded bytes | file path | uint8 array, "caption": str | bytes | [str, ...],
     "label": int (-1 = none)}

or, when the record itself cannot be read (a truncated tar member, a corrupt ArrayRecord
entry, a sample without an image), {"_bad": reason}. Decoding happens later, in
`pipeline.Preprocess`, which also turns undecodable images and empty or non-UTF-8
captions into {"_bad": ...}; the pipeline drops those and counts them (batch["skipped"]).

File patterns (`data.train_files`, `data.eval_files`) are brace patterns, globs, or both,
several separated by ";": "data/{00000..00127}.tar", "data/*.tar",
"a/{train,extra}-*.arrayrecord; b/x.arrayrecord". Numeric brace ranges keep the width of
their first bound (zero padding). A pattern that matches no file is an error.

The ArrayRecord format written by `tools/convert_to_arrayrecord.py` ("xmodal record v1"):
one record per example, each a msgpack map

    {"image": <bytes: the encoded JPEG/PNG/WebP file>,
     "caption": <str> or [<str>, ...],      # several captions allowed
     "label": <int>,                        # optional, -1 = none
     "key": <str>,                          # optional, the example's name in its source
     "meta": {...}}                         # optional, anything msgpack can hold; ignored
"""

import concurrent.futures
import glob
import io
import json
import logging
import os
import re
import tarfile

import msgpack
import numpy as np

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
RECORD_FORMAT = "xmodal record v1"


class SourceError(ValueError):
  """A source cannot be opened; the message names the pattern or file."""


# ----------------------------------------------------------------------------- patterns

_BRACE = re.compile(r"\{([^{}]*)\}")


def expand_braces(pattern: str) -> list[str]:
  """'a/{0..2}-{x,y}' -> ['a/0-x', 'a/0-y', 'a/1-x', ...] (no globbing)."""
  m = _BRACE.search(pattern)
  if not m:
    return [pattern]
  body = m.group(1)
  numeric = re.fullmatch(r"(\d+)\.\.(\d+)", body)
  if numeric:
    lo, hi = numeric.groups()
    width = len(lo) if lo.startswith("0") else 0
    step = 1 if int(hi) >= int(lo) else -1
    options = [str(i).zfill(width) for i in range(int(lo), int(hi) + step, step)]
  else:
    options = body.split(",")
  head, tail = pattern[: m.start()], pattern[m.end():]
  return [p for o in options for p in expand_braces(head + o + tail)]


def expand_pattern(patterns: str) -> list[str]:
  """Files matched by ";"-separated brace/glob patterns, in pattern order (each glob
  sorted), duplicates dropped. Brace results without glob characters must exist."""
  paths, missing = [], []
  for pattern in (p.strip() for p in patterns.split(";")):
    if not pattern:
      continue
    for candidate in expand_braces(os.path.expanduser(pattern)):
      if any(c in candidate for c in "*?["):
        paths.extend(sorted(glob.glob(candidate)))
      elif os.path.isfile(candidate):
        paths.append(candidate)
      else:
        missing.append(candidate)
  if missing and not paths:
    raise SourceError(f"no file matches {patterns!r} (e.g. {missing[0]!r} does not exist)")
  if missing:
    raise SourceError(f"{patterns!r}: {len(missing)} listed files do not exist, e.g. "
                      f"{missing[0]!r}")
  if not paths:
    raise SourceError(f"no file matches {patterns!r}")
  return list(dict.fromkeys(paths))


# ----------------------------------------------------------------------------- webdataset

def _split_key(name: str) -> tuple[str, str]:
  """'dir/000123.seg.jpg' -> ('dir/000123', 'seg.jpg'): webdataset's key/extension split
  (the first dot of the basename)."""
  folder, base = os.path.split(name)
  stem, dot, ext = base.partition(".")
  return (os.path.join(folder, stem) if folder else stem), ext.lower() if dot else ""


def index_tar(path: str) -> tuple[list[dict], int]:
  """Scans one tar's headers -> ([{ext: (offset, size)} per sample], dropped members).

  A truncated tar keeps the samples whose members lie wholly inside the file; members cut
  off (or after an unreadable header) are dropped and counted."""
  size = os.path.getsize(path)
  samples, order, dropped = {}, [], 0
  try:
    with tarfile.open(path, "r:") as tf:
      while True:
        try:
          info = tf.next()
        except (tarfile.ReadError, EOFError, OSError) as e:
          logging.warning("%s: unreadable tar header after %d samples (%s); the rest of the "
                          "shard is skipped", path, len(order), e)
          dropped += 1
          break
        if info is None:
          break
        if not info.isfile():
          continue
        if info.offset_data + info.size > size:
          dropped += 1
          continue
        key, ext = _split_key(info.name)
        if key not in samples:
          samples[key] = {}
          order.append(key)
        samples[key][ext] = (info.offset_data, info.size)
      end = tf.offset
    # tarfile reads a header cut short as the end of the archive: anything but zero
    # padding after the last member means the shard was truncated or damaged there.
    with open(path, "rb") as f:
      f.seek(end)
      tail = f.read()
    if tail.strip(b"\0"):
      logging.warning("%s: %d bytes after the last readable member are not a tar member "
                      "(truncated shard?); skipped", path, len(tail))
      dropped += 1
  except (tarfile.ReadError, OSError) as e:
    logging.warning("%s: not a readable tar (%s); shard skipped", path, e)
    return [], 1
  return [samples[k] for k in order], dropped


class WebDatasetSource:
  """Random access over webdataset tar shards: `{key}.jpg|jpeg|png|webp` (the image),
  `{key}.txt` (the caption), optional `{key}.json` (its `caption_key` field may hold a
  caption or a list of captions, used when there is no .txt; its `label_key` field a
  label) and optional `{key}.cls` (a label).

  The index (shard, byte offset and size of each member) is built at construction by
  scanning the tar headers (no member data is read); samples without an image or caption
  member are kept and read as bad records, so they are counted like other bad data."""

  def __init__(self, pattern: str, caption_key: str = "caption", label_key: str = "label"):
    self.pattern, self.caption_key, self.label_key = pattern, caption_key, label_key
    self.paths = expand_pattern(pattern)
    columns = {k: [] for k in ("shard", "img", "img_n", "txt", "txt_n", "json", "json_n",
                               "cls", "cls_n")}
    self.dropped_members = 0
    # Header scans are I/O-bound: a few threads overlap them on network filesystems.
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
      scans = list(pool.map(index_tar, self.paths))
    for shard, (samples, dropped) in enumerate(scans):
      self.dropped_members += dropped
      for members in samples:
        image = next((members[e] for e in IMAGE_EXTENSIONS if e in members), (-1, -1))
        columns["shard"].append(shard)
        for name, member in (("img", image), ("txt", members.get("txt", (-1, -1))),
                             ("json", members.get("json", (-1, -1))),
                             ("cls", members.get("cls", (-1, -1)))):
          columns[name].append(member[0])
          columns[name + "_n"].append(member[1])
    if not columns["shard"]:
      raise SourceError(f"webdataset {pattern!r}: no samples in {len(self.paths)} shards")
    # 44 bytes a sample: int64 offsets, int32 sizes and shard ids.
    self._index = {k: np.asarray(v, np.int32 if k == "shard" or k.endswith("_n") else np.int64)
                   for k, v in columns.items()}

  def __len__(self) -> int:
    return len(self._index["shard"])

  def _read(self, f, offset, size) -> bytes | None:
    if offset < 0:
      return None
    f.seek(int(offset))
    data = f.read(int(size))
    if len(data) != size:
      raise EOFError(f"member cut short ({len(data)} of {size} bytes)")
    return data

  def __getitem__(self, index: int) -> dict:
    ix = {k: v[index] for k, v in self._index.items()}
    path = self.paths[ix["shard"]]
    try:
      with open(path, "rb") as f:
        image = self._read(f, ix["img"], ix["img_n"])
        text = self._read(f, ix["txt"], ix["txt_n"])
        meta = self._read(f, ix["json"], ix["json_n"])
        cls = self._read(f, ix["cls"], ix["cls_n"])
    except (OSError, EOFError) as e:
      return {"_bad": f"{path} sample {index}: {e}"}
    if image is None:
      return {"_bad": f"{path} sample {index}: no image member"}
    label, caption = -1, text
    if meta is not None:
      try:
        meta = json.loads(meta)
      except (ValueError, UnicodeDecodeError):
        meta = {}
      if caption is None and isinstance(meta, dict):
        caption = meta.get(self.caption_key, meta.get("captions"))
      if isinstance(meta, dict) and isinstance(meta.get(self.label_key), int):
        label = meta[self.label_key]
    if cls is not None:
      try:
        label = int(cls.decode().strip())
      except (ValueError, UnicodeDecodeError):
        pass
    if caption is None:
      return {"_bad": f"{path} sample {index}: no caption (.txt or json {self.caption_key!r})"}
    return {"image": image, "caption": caption, "label": label}

  def __repr__(self):
    return f"WebDatasetSource({self.pattern!r}, {len(self.paths)} shards, {len(self)} samples)"


# ----------------------------------------------------------------------------- ArrayRecord

def encode_record(image: bytes, caption, label: int = -1, key: str = "",
                  meta: dict | None = None) -> bytes:
  """One example -> an "xmodal record v1" (msgpack map)."""
  record = {"image": bytes(image), "caption": caption, "label": int(label)}
  if key:
    record["key"] = key
  if meta:
    record["meta"] = meta
  return msgpack.packb(record, use_bin_type=True)


def decode_record(data: bytes) -> dict:
  """An "xmodal record v1" -> raw record dict (raises on malformed data)."""
  record = msgpack.unpackb(data, raw=False)
  if not isinstance(record, dict) or "image" not in record or "caption" not in record:
    raise ValueError("not an xmodal record (a msgpack map with 'image' and 'caption')")
  return {"image": record["image"], "caption": record["caption"],
          "label": int(record.get("label", -1))}


class _LazySource:
  """A source whose reader (`self._source`) opens on first use in each process: pickling
  (to grain worker processes) drops it; `self._length` is fixed at construction."""

  def __getstate__(self):
    state = dict(self.__dict__)
    state["_source"] = None
    return state

  def __len__(self) -> int:
    return self._length


class ArrayRecordSource(_LazySource):
  """ArrayRecord shards of "xmodal record v1" records (see the module docstring).

  Shards that cannot be opened (truncated, not ArrayRecord) are skipped with a warning and
  counted in `skipped_shards`; a record that does not decode reads as a bad record."""

  def __init__(self, pattern: str):
    from array_record.python import array_record_module
    self.pattern = pattern
    good, self.skipped_shards = [], []
    for path in expand_pattern(pattern):
      try:
        reader = array_record_module.ArrayRecordReader(path)
        reader.num_records()
        reader.close()
        good.append(path)
      except Exception as e:  # the C++ reader raises RuntimeError/ValueError on damage.
        logging.warning("%s: unreadable ArrayRecord shard (%s); skipped", path, e)
        self.skipped_shards.append(path)
    if not good:
      raise SourceError(f"arrayrecord {pattern!r}: no readable shard")
    self.paths = good
    self._source = None
    self._length = len(self.source)

  @property
  def source(self):
    if self._source is None:
      import grain
      self._source = grain.sources.ArrayRecordDataSource(self.paths)
    return self._source

  def __getitem__(self, index: int) -> dict:
    try:
      return decode_record(self.source[index])
    except Exception as e:
      return {"_bad": f"arrayrecord {self.pattern!r} record {index}: {e}"}

  def __repr__(self):
    return f"ArrayRecordSource({self.pattern!r}, {len(self.paths)} shards, {len(self)} records)"


# ----------------------------------------------------------------------------- tfds

def parse_keys(spec: str) -> dict[str, str]:
  """'image=image,caption=captions/text,label=label' -> {role: feature path}."""
  out = {"image": "image", "caption": "caption", "label": ""}
  for part in (p.strip() for p in spec.split(",")):
    if not part:
      continue
    role, eq, feature = part.partition("=")
    if not eq or role.strip() not in out:
      raise ValueError(f"bad tfds key mapping {part!r}: expected ROLE=FEATURE with ROLE in "
                       f"{sorted(out)}")
    out[role.strip()] = feature.strip()
  return out


def _lookup(example, path: str):
  for part in path.split("/"):
    example = example[part]
  return example


class TfdsSource(_LazySource):
  """A tensorflow-datasets build read through `tfds.data_source` (ArrayRecord builds only;
  no TensorFlow needed). `keys` maps roles to feature paths ("/" for nested features). The
  image feature is not decoded by tfds (SkipDecoding), so the pipeline decodes the JPEG
  bytes itself at reduced size."""

  def __init__(self, name: str, split: str, data_dir: str = "", keys: str = ""):
    self.name, self.split, self.data_dir = name, split, data_dir or None
    self.keys = parse_keys(keys)
    self._source = None
    self._length = len(self.source)

  @property
  def source(self):
    if self._source is None:
      import tensorflow_datasets as tfds
      decoders, node = {}, None
      parts = self.keys["image"].split("/")
      node = decoders
      for part in parts[:-1]:
        node = node.setdefault(part, {})
      node[parts[-1]] = tfds.decode.SkipDecoding()
      self._source = tfds.data_source(self.name, split=self.split, data_dir=self.data_dir,
                                      decoders=decoders)
    return self._source

  def __getitem__(self, index: int) -> dict:
    try:
      example = self.source[index]
      image = _lookup(example, self.keys["image"])
      # "caption=" maps no caption: a classification set, read by evaluation tasks.
      caption = _lookup(example, self.keys["caption"]) if self.keys["caption"] else ""
      label = int(_lookup(example, self.keys["label"])) if self.keys["label"] else -1
    except Exception as e:
      return {"_bad": f"tfds {self.name}[{self.split}] example {index}: {e}"}
    if isinstance(image, np.ndarray) and image.dtype == object:
      image = image.item()
    if isinstance(caption, np.ndarray):       # a Sequence of Text: bytes, decoded later
      caption = list(caption.reshape(-1))
    return {"image": image, "caption": caption, "label": label}

  def __repr__(self):
    return f"TfdsSource({self.name!r}, split={self.split!r}, {len(self)} examples)"


def image_bytes(record_image) -> bytes:
  """Raw record image -> encoded bytes (reads a path; encodes an array as PNG)."""
  if isinstance(record_image, (bytes, bytearray)):
    return bytes(record_image)
  if isinstance(record_image, str):
    with open(record_image, "rb") as f:
      return f.read()
  from PIL import Image
  buf = io.BytesIO()
  Image.fromarray(np.asarray(record_image, np.uint8)).save(buf, "PNG")
  return buf.getvalue()


class FeaturesSource:
  """Cached features (`tools/cache_features.py`): one or more .npz files, each holding
  {modality: float32 [N, F_modality], "label": int [N] (optional)}. Record i ->
  {modality: [F], "label"}: tower-ready, for `vector` towers with encoder="identity" (and
  usually head="mlp"), so frozen encoders run once per example, not once per epoch."""

  def __init__(self, pattern: str):
    self.paths = expand_pattern(pattern)
    if not self.paths:
      raise SourceError(f"no features file matches {pattern!r}")
    parts = []
    for path in self.paths:
      with np.load(path) as f:
        parts.append({k: f[k] for k in f.files})
    keys = set(parts[0])
    for path, part in zip(self.paths, parts):
      if set(part) != keys:
        raise SourceError(f"{path}: arrays {sorted(part)} differ from {self.paths[0]}'s "
                          f"{sorted(keys)}")
    self.arrays = {k: np.concatenate([p[k] for p in parts]) for k in keys}
    sizes = {k: len(v) for k, v in self.arrays.items()}
    if len(set(sizes.values())) != 1:
      raise SourceError(f"{pattern}: arrays have different lengths {sizes}")
    self._length = next(iter(sizes.values()))
    if "label" not in self.arrays:
      self.arrays["label"] = np.full(self._length, -1, np.int32)

  def __len__(self) -> int:
    return self._length

  def __getitem__(self, index: int) -> dict:
    return {k: (np.int32(v[index]) if k == "label" else v[index]) for k, v in self.arrays.items()}

  def __repr__(self):
    return f"FeaturesSource({self.paths}, {self._length} rows, arrays {sorted(self.arrays)})"
