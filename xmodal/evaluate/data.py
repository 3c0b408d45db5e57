"""The data of an evaluation task, read through the input pipeline's own sources and
evaluation preprocessing (the one place that knows how the pipeline is laid out).

A task's `data` section replaces fields of `config.data` (`task_config`); `Reader(config,
split)` then opens that split with `pipeline.make_source` and prepares rows as evaluation
does (`pipeline.preprocess_for(config, train=False)`: centre crop, first caption; ready
records as they are). `Reader.read(indices, ...)` returns one chunk of rows:

    {modality: tower inputs [n, ...], "label": int32 [n] (-1 = none), "index": int64 [n]
     (the row in the source), FIELD: [n, ...] for each extra record field asked for,
     "captions": [[str, ...]] * n (every usable caption, when asked), "key": [str] * n}

with the rows that cannot be used dropped and counted (`Chunk.skipped`). Rows are decoded
in `data.read_threads` threads (PIL, simplejpeg and OpenCV release the GIL).
"""

import collections
import concurrent.futures
import dataclasses
import logging

import ml_collections
import numpy as np

from xmodal.data import bad as bad_lib, pipeline, sources, tokenizer as tokenizer_lib

# The raw-record fields image/caption sources fill (xmodal/data/sources.py).
IMAGE_FIELD, TEXT_FIELD = "image", "caption"


def task_config(config, task) -> ml_collections.ConfigDict:
  """The run's config with the task's `data` fields in place of the run's. A task that
  names an `eval_source` reads its training split (probes) from the same kind."""
  out = ml_collections.ConfigDict(config.to_dict())
  given = task.get("data", None) or {}
  given = given.to_dict() if isinstance(given, ml_collections.ConfigDict) else dict(given)
  out.data.update(given)
  if "eval_source" in given and given["eval_source"] and "source" not in given:
    out.data.source = given["eval_source"]
  return out


def data_key(task) -> str:
  """Tasks with equal data fields read the same rows (and share embeddings)."""
  given = task.get("data", None) or {}
  given = given.to_dict() if isinstance(given, ml_collections.ConfigDict) else dict(given)
  return repr(sorted(given.items()))


def label_names(config) -> tuple[str, ...] | None:
  """The class names a tfds build declares for its label feature (its ClassLabel), when
  the evaluation split is one; else None."""
  d = config.data
  if (d.eval_source or d.source) != "tfds":
    return None
  feature = sources.parse_keys(d.tfds_keys)["label"]
  if not feature:
    return None
  import tensorflow_datasets as tfds  # noqa: PLC0415
  node = tfds.builder(d.tfds_name, data_dir=d.tfds_data_dir or None).info.features
  for part in feature.split("/"):
    node = node[part]
  names = getattr(node, "names", None)
  return tuple(n.replace("_", " ") for n in names) if names else None


def usable_captions(caption) -> list[str]:
  """Every caption of a record that is non-empty UTF-8 text (one or a list)."""
  items = list(caption) if isinstance(caption, (list, tuple, np.ndarray)) else [caption]
  out = []
  for c in items:
    if isinstance(c, (bytes, np.bytes_)):
      try:
        c = bytes(c).decode("utf-8")
      except UnicodeDecodeError:
        continue
    if isinstance(c, str) and c.strip():
      out.append(c)
  return out


def record_key(record) -> str:
  """A record's name in its source: its "key" field, else its image path, else ""."""
  key = record.get("key")
  if isinstance(key, (bytes, np.bytes_)):
    key = bytes(key).decode("utf-8", "replace")
  if isinstance(key, str):
    return key
  image = record.get(IMAGE_FIELD)
  return image if isinstance(image, str) else ""


@dataclasses.dataclass
class Chunk:
  rows: dict            # see the module docstring
  skipped: int          # rows dropped as unusable
  reasons: collections.Counter = dataclasses.field(default_factory=collections.Counter)

  def __len__(self):
    return len(self.rows["index"])


class Reader:
  """Rows of one split of `config`'s data ("train" or "eval"), prepared for evaluation."""

  def __init__(self, config, split: str = "eval"):
    self.config, self.split = config, split
    self.source = pipeline.make_source(config, split)
    self.ready = pipeline.ready_source(config, split)
    self.inputs = () if self.ready else pipeline.tower_inputs(config)
    self._preps = {}         # towers -> the evaluation preprocessing of only those towers
    self._tokenizer = None

  def __len__(self) -> int:
    return len(self.source)

  def __repr__(self):
    return repr(self.source)

  @property
  def tokenizer(self):
    if self._tokenizer is None:
      self._tokenizer = tokenizer_lib.get_tokenizer(self.config)
    return self._tokenizer

  def sample(self, limit: int, seed: int = 0) -> np.ndarray:
    """Source row indices: all, or `limit` of them drawn at random (sorted; the same each
    time), since sources are often ordered by class."""
    n = len(self)
    if not limit or limit >= n:
      return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, limit, replace=False))

  def _prep(self, towers) -> pipeline.Preprocess:
    """Evaluation preprocessing of the towers a task reads only: a classification set
    needs no captions, so a row without one is not dropped."""
    if towers not in self._preps:
      self._preps[towers] = pipeline.Preprocess(
          tuple(t for t in self.inputs if t.modality in towers), train=False)
    return self._preps[towers]

  def _one(self, index: int, towers, fields, captions: bool):
    """One row -> (example dict, None) or (None, bad record {"_bad": why, "_reason"})."""
    record = self.source[int(index)]
    if "_bad" in record:
      return None, record
    out = {}
    for f in fields:
      if record.get(f) is None:
        return None, bad_lib.bad("missing_field", f"no field {f!r} (the record has "
                                 f"{sorted(k for k in record)})")
      out[f] = np.asarray(record[f])
    if captions:
      out["captions"] = usable_captions(record.get(TEXT_FIELD, []))
      if not out["captions"]:
        return None, bad_lib.bad("empty", "no usable caption")
    out["key"] = record_key(record)
    if self.ready:
      ex = record
    else:
      ex = self._prep(towers).random_map(record, np.random.default_rng(0))
      if "_bad" in ex:
        return None, ex
    for t in towers:
      out[t] = ex[t]
    out["label"] = np.int32(ex.get("label", record.get("label", -1)))
    return out, None

  def read(self, indices, towers, fields=(), captions: bool = False) -> Chunk:
    """The usable rows of `indices` (see the module docstring): tower inputs of `towers`,
    labels, the record `fields` asked for and, with `captions`, every usable caption."""
    towers, fields = tuple(towers), tuple(fields)
    threads = max(1, int(self.config.data.read_threads))
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
      results = list(pool.map(lambda i: self._one(i, towers, fields, captions), indices))
    good, reasons = [], collections.Counter()
    for i, (ex, why) in zip(indices, results):
      if ex is None:
        reasons[bad_lib.reason_of(why)] += 1
        logging.warning("eval: skipping row %d of %r (%s): %s", i, self.source,
                        bad_lib.reason_of(why), why["_bad"])
        continue
      ex["index"] = np.int64(i)
      good.append(ex)
    rows = {"index": np.asarray([e["index"] for e in good], np.int64),
            "label": np.asarray([e["label"] for e in good], np.int32),
            "key": [e["key"] for e in good]}
    for name in towers + fields:
      rows[name] = _stack([e[name] for e in good], name, self.source)
    if captions:
      rows["captions"] = [e["captions"] for e in good]
    return Chunk(rows, sum(reasons.values()), reasons)

  def tokenize(self, texts) -> np.ndarray:
    """Captions -> int32 token ids [N, L], as the pipeline tokenizes them."""
    return self.tokenizer.encode_batch(list(texts))


def _stack(values, name, source) -> np.ndarray:
  if not values:
    return np.zeros((0,), np.float32)
  shapes = {np.shape(v) for v in values}
  if len(shapes) > 1:
    raise sources.SourceError(f"{source!r}: field {name!r} has rows of different shapes "
                              f"{sorted(shapes)[:3]}; an evaluation needs one shape")
  return np.stack(values)
