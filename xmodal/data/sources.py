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
one record per example, each a msgpack map of any fields (numpy arrays as .npy bytes in
msgpack extension type 1; `encode_fields`); for images and captions

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

from xmodal.data import bad

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

  A truncated tar keeps the samples whose members lie wholly inside the file. A sample
  with a member cut off gets "_cut" (it reads as a bad "truncated" record), and the
  unreadable rest of a damaged shard is one more "_cut" sample, so the rows a truncated
  shard loses are counted in data/skipped every time the pipeline reaches them (how many
  samples the lost bytes held cannot be known; they count as one)."""
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
        key, ext = _split_key(info.name)
        if key not in samples:
          samples[key] = {}
          order.append(key)
        if info.offset_data + info.size > size:
          dropped += 1
          samples[key]["_cut"] = (info.offset_data, info.size)
          continue
        samples[key][ext] = (info.offset_data, info.size)
      end = tf.offset
    # tarfile reads a header cut short as the end of the archive: anything but zero
    # padding after the last member means the shard was truncated or damaged there.
    with open(path, "rb") as f:
      f.seek(end)
      tail = f.read()
    if tail.strip(b"\0") and not (order and "_cut" in samples[order[-1]]):
      logging.warning("%s: %d bytes after the last readable member are not a tar member "
                      "(truncated shard?); skipped and counted as one truncated sample",
                      path, len(tail))
      dropped += 1
      samples["_tail"] = {"_cut": (end, len(tail))}
      order.append("_tail")
  except (tarfile.ReadError, OSError) as e:
    logging.warning("%s: not a readable tar (%s); shard skipped", path, e)
    return [], 1
  return [samples[k] for k in order], dropped


_FRAME = re.compile(r"^(\d+)\.(jpg|jpeg|png|webp)$")


class WebDatasetSource:
  """Random access over webdataset tar shards. A sample is the members sharing a key; the
  record holds each member's bytes under its extension ("jpg", "txt", "wav", "npy",
  "nii.gz", ...), plus
    "image"   the first of {key}.jpg|jpeg|png|webp,
    "caption" {key}.txt, else the `caption_key` field (or "captions") of {key}.json,
    "label"   the json's `label_key` field or {key}.cls (-1 = none),
    "frames"  {key}.0.jpg, {key}.1.jpg, ... in numeric order (a clip stored as images),
  and the other fields of {key}.json. `required` (default image and caption) names the
  fields a sample must have: one without them reads as a bad "missing_field" record.

  The index (shard, byte offset and size of each member) is built at construction by
  scanning the tar headers (no member data is read)."""

  def __init__(self, pattern: str, caption_key: str = "caption", label_key: str = "label",
               required=None):
    self.pattern, self.caption_key, self.label_key = pattern, caption_key, label_key
    self.required = ("image", "caption") if required is None else tuple(required)
    self.paths = expand_pattern(pattern)
    self.dropped_members = 0
    # Header scans are I/O-bound: a few threads overlap them on network filesystems.
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
      scans = list(pool.map(index_tar, self.paths))
    self.exts = sorted({e for samples, _ in scans for m in samples for e in m if e != "_cut"})
    columns = {"shard": [], "cut": [], "cut_n": []}
    for ext in self.exts:
      columns["o:" + ext], columns["n:" + ext] = [], []
    for shard, (samples, dropped) in enumerate(scans):
      self.dropped_members += dropped
      for members in samples:
        columns["shard"].append(shard)
        cut = members.get("_cut", (-1, -1))
        columns["cut"].append(cut[0])
        columns["cut_n"].append(cut[1])
        for ext in self.exts:
          offset, size = members.get(ext, (-1, -1))
          columns["o:" + ext].append(offset)
          columns["n:" + ext].append(size)
    if not columns["shard"]:
      raise SourceError(f"webdataset {pattern!r}: no samples in {len(self.paths)} shards")
    # 12 bytes a member kind per sample: int64 offsets, int32 sizes (and shard ids).
    self._index = {k: np.asarray(v, np.int64 if k.startswith(("o:", "cut")) and k != "cut_n"
                                 else np.int32) for k, v in columns.items()}

  def __len__(self) -> int:
    return len(self._index["shard"])

  def _read(self, f, offset, size) -> bytes:
    f.seek(int(offset))
    data = f.read(int(size))
    if len(data) != size:
      raise EOFError(f"member cut short ({len(data)} of {size} bytes)")
    return data

  def __getitem__(self, index: int) -> dict:
    path = self.paths[self._index["shard"][index]]
    cut = self._index["cut"][index]
    if cut >= 0:
      return bad.bad("truncated", f"{path} sample {index}: cut off by the end of a truncated "
                     f"shard (member at byte {cut}, {self._index['cut_n'][index]} bytes)")
    members = {}
    try:
      with open(path, "rb") as f:
        for ext in self.exts:
          offset = self._index["o:" + ext][index]
          if offset >= 0:
            members[ext] = self._read(f, offset, self._index["n:" + ext][index])
    except EOFError as e:
      return bad.bad("truncated", f"{path} sample {index}: {e}")
    except OSError as e:
      return bad.bad("unreadable", f"{path} sample {index}: {e}")
    record = self._record(members)
    for field in self.required:
      if field not in record:
        what = ("no image member" if field == "image" else
                f"no caption (.txt or json {self.caption_key!r})" if field == "caption" else
                f"no {field!r} member")
        return bad.bad("missing_field", f"{path} sample {index}: {what}")
    record["_where"] = f"{path} sample {index}"
    return record

  def _record(self, members: dict) -> dict:
    record = dict(members)
    image = next((members[e] for e in IMAGE_EXTENSIONS if e in members), None)
    if image is not None:
      record["image"] = image
    frames = sorted((int(m.group(1)), e) for e in members if (m := _FRAME.match(e)))
    if frames:
      record["frames"] = [members[e] for _, e in frames]
    label, caption = -1, members.get("txt")
    meta = members.get("json")
    if meta is not None:
      try:
        meta = json.loads(meta)
      except (ValueError, UnicodeDecodeError):
        meta = {}
      if isinstance(meta, dict):
        if caption is None:
          caption = meta.get(self.caption_key, meta.get("captions"))
        if isinstance(meta.get(self.label_key), int):
          label = meta[self.label_key]
        for k, v in meta.items():
          record.setdefault(k, v)
    cls = members.get("cls")
    if cls is not None:
      try:
        label = int(cls.decode().strip())
      except (ValueError, UnicodeDecodeError):
        pass
    if caption is not None:
      record["caption"] = caption
    record["label"] = label
    return record

  def __repr__(self):
    return f"WebDatasetSource({self.pattern!r}, {len(self.paths)} shards, {len(self)} samples)"


# ----------------------------------------------------------------------------- ArrayRecord

_NDARRAY = 1      # msgpack extension type: a numpy array stored as .npy bytes


def _pack_default(value):
  if isinstance(value, np.ndarray):
    buf = io.BytesIO()
    np.save(buf, value, allow_pickle=False)
    return msgpack.ExtType(_NDARRAY, buf.getvalue())
  if isinstance(value, np.generic):
    return value.item()
  raise TypeError(f"cannot store {type(value).__name__} in an xmodal record")


def _unpack_ext(code, data):
  if code == _NDARRAY:
    return np.load(io.BytesIO(data), allow_pickle=False)
  return msgpack.ExtType(code, data)


def encode_fields(fields: dict) -> bytes:
  """Any record {field: bytes | str | number | list | np.ndarray | map} -> an xmodal record
  (msgpack map; arrays as .npy bytes in extension type 1)."""
  return msgpack.packb(fields, use_bin_type=True, default=_pack_default)


def encode_record(image: bytes, caption, label: int = -1, key: str = "",
                  meta: dict | None = None) -> bytes:
  """One image/caption example -> an "xmodal record v1" (msgpack map)."""
  record = {"image": bytes(image), "caption": caption, "label": int(label)}
  if key:
    record["key"] = key
  if meta:
    record["meta"] = meta
  return encode_fields(record)


def decode_record(data: bytes) -> dict:
  """An xmodal record -> raw record dict: every field (arrays back as numpy), "label" an
  int (-1 = none); "key" and "meta" are dropped (raises on malformed data)."""
  record = msgpack.unpackb(data, raw=False, ext_hook=_unpack_ext)
  if not isinstance(record, dict):
    raise ValueError("not an xmodal record (a msgpack map)")
  out = {k: v for k, v in record.items() if k not in ("key", "meta")}
  out["label"] = int(record.get("label", -1))
  return out


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
      return bad.bad("unreadable", f"arrayrecord {self.pattern!r} record {index}: {e}")

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
      return bad.bad("unreadable", f"tfds {self.name}[{self.split}] example {index}: {e}")
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
