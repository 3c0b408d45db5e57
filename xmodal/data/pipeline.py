"""The grain input pipeline: sources -> shuffle -> per-process shard -> repeat (epochs
counted) -> [mixture] -> decode/augment/tokenize -> drop-and-count bad rows -> per-process
batches -> [worker processes].

Sources (`data.source`): "shapes" (embedded), "manifest" (JSONL/CSV/Parquet), "webdataset"
(tar shards), "arrayrecord" (xmodal records, see `sources.py`), "tfds"
(`tfds.data_source`, no TensorFlow), or "mixture" (`data.mixture`: several of these with
weights, e.g. "webdataset:/d/laion/{00000..00127}.tar@0.7; arrayrecord:/d/cc/*.ar@0.3").

Training order is a pure function of (config.seed, process index, process count, number
of workers): each source is shuffled globally with a fresh permutation each epoch (all
processes draw the same permutation), process p reads every `count`-th element from p, so
processes read disjoint examples, and augmentation randomness is seeded per element. With
`data.num_workers` > 0 the batches are made in that many worker processes (grain
`mp_prefetch`), which changes the order, not the content, of batches. The iterator is a
grain `DatasetIterator` whose state is saved in every checkpoint, so a resumed run reads
exactly the batches an uninterrupted one would.

Each batch is {image modality: uint8 [b, S, S, 3] (or float32, `data.image_dtype`),
text modality: int32 [b, L] ([b, K, L] with `data.captions="k"`), "label": int32 [b], "skipped": int32 [b], "epoch": int32 [b],
"source": int32 [b], "group": int32 [b]}, where the modality keys are the tower names,
"skipped" counts the unreadable rows dropped just before each example, "epoch" is the pass
over its source the example comes from (0-based), "source" its index in the mixture (0
without one) and "group" the record's position in the global stream modulo 2**31: equal
for the examples one record yields (`data.captions="all"`), distinct for any two records
of a batch on every process (a batch spans far fewer than 2**31 positions). The loss uses
it as multi-positive group ids when `config_lib.group_positives(config)`.
"""

import dataclasses
import logging

import grain
import numpy as np

from xmodal.data import manifest, shapes, sources, synthetic, tokenizer as tokenizer_lib
from xmodal.data import transforms

# Sources whose records are already tower inputs ({modality: array, "label"}): no decoding,
# augmentation or tokenizing, any towers.
READY_SOURCES = ("synthetic", "features")

# batch[GROUP_KEY]: int32 group ids, the record's global stream position modulo
# GROUP_MODULUS (int32; positions within one batch never lie 2**31 apart).
GROUP_KEY = "group"
GROUP_MODULUS = 2 ** 31

SOURCE_KINDS = ("shapes", "manifest", "webdataset", "arrayrecord", "tfds")
# A run of this many unreadable examples in a row means the data is broken, not noisy:
# the iterator raises instead of spinning forever.
MAX_CONSECUTIVE_BAD = 10_000


def modality_names(config) -> tuple[str, str]:
  """(image modality, text modality): the names of the 'vit' and 'text' towers."""
  by_kind = {cfg.kind: name for name, cfg in config.towers.items() if not cfg.get("input")}
  if "vit" not in by_kind or "text" not in by_kind:
    raise ValueError(f"config.towers: image/caption data needs a 'vit' and a 'text' tower, "
                     f"got {sorted(by_kind)}")
  return by_kind["vit"], by_kind["text"]


def ready_source(config, split: str = "train") -> bool:
  """True if `split` comes from a source of tower-ready records (READY_SOURCES)."""
  kind = config.data.source if split == "train" else (config.data.eval_source or
                                                      config.data.source)
  return kind in READY_SOURCES


def parse_mixture(spec: str) -> list[tuple[str, str, float]]:
  """'kind:pattern@weight; ...' -> [(kind, pattern, weight)]. The weight defaults to 1; for
  "tfds" the pattern is the split (name, data_dir and keys come from data.tfds_*)."""
  out = []
  for entry in (e.strip() for e in spec.split(";")):
    if not entry:
      continue
    kind, colon, rest = entry.partition(":")
    kind = kind.strip()
    if not colon or kind not in SOURCE_KINDS or kind == "shapes":
      raise ValueError(f"mixture entry {entry!r}: expected KIND:PATTERN[@WEIGHT] with KIND "
                       f"in {SOURCE_KINDS[1:]}")
    pattern, weight = rest, 1.0
    if "@" in rest:
      pattern, _, w = rest.rpartition("@")
      try:
        weight = float(w)
      except ValueError:
        raise ValueError(f"mixture entry {entry!r}: weight {w!r} is not a number") from None
    if weight <= 0:
      raise ValueError(f"mixture entry {entry!r}: weight must be > 0")
    out.append((kind, pattern.strip(), weight))
  if not out:
    raise ValueError("empty mixture")
  return out


def open_source(kind: str, pattern: str, config, split: str):
  """One random-access source of `kind` over `pattern` (a tfds split for "tfds")."""
  d = config.data
  if kind == "shapes":
    size = d.shapes_train_size if split == "train" else d.shapes_eval_size
    return shapes.ShapesSource(split, size, d.image_size)
  if kind == "manifest":
    return manifest.ManifestSource(pattern, d.image_key, d.caption_key, d.label_key)
  if kind == "webdataset":
    return sources.WebDatasetSource(pattern, d.caption_key, d.label_key)
  if kind == "arrayrecord":
    return sources.ArrayRecordSource(pattern)
  if kind == "tfds":
    return sources.TfdsSource(d.tfds_name, pattern, d.tfds_data_dir, d.tfds_keys)
  if kind == "synthetic":
    size = d.synthetic_train_size if split == "train" else d.synthetic_eval_size
    return synthetic.SyntheticSource(config, split, size, d.synthetic_classes)
  if kind == "features":
    return sources.FeaturesSource(pattern)
  raise ValueError(f"config.data.source: unknown source kind {kind!r}")


def source_specs(config, split: str) -> list[tuple[str, str, float]]:
  """[(kind, pattern, weight)] that make up `split` ("train" or "eval")."""
  d = config.data
  if split == "train":
    if d.source == "mixture":
      return parse_mixture(d.mixture)
    kind = d.source
  else:
    kind = d.eval_source or d.source
  if kind in ("shapes", "synthetic"):
    return [(kind, "", 1.0)]
  if kind == "tfds":
    return [("tfds", d.tfds_train_split if split == "train" else d.tfds_eval_split, 1.0)]
  if kind == "manifest":
    legacy = d.train_manifest if split == "train" else d.eval_manifest
    files = d.train_files if split == "train" else d.eval_files
    return [("manifest", files or legacy, 1.0)]
  return [(kind, d.train_files if split == "train" else d.eval_files, 1.0)]


def make_source(config, split: str):
  """The random-access source for `split` (the first component of a training mixture)."""
  kind, pattern, _ = source_specs(config, split)[0]
  return open_source(kind, pattern, config, split)


@dataclasses.dataclass
class Preprocess(grain.transforms.RandomMap):
  """Record -> example, or {"_bad": reason} when the image or caption cannot be used.

  train=True: random resized crop (+ flip); train=False: resize + center crop (rng unused).
  Several captions: "sample" picks one at random per use (eval: the first), "first" the
  first, "all" yields {"_many": [one example per caption]} (same pixels), which `SkipBad`
  unrolls, "k" gives the text modality `num_captions` captions [K, L] (eval: the first).
  """
  image_key: str
  text_key: str
  image_size: int
  tokenizer: object
  train: bool
  crop_scale: tuple = (0.8, 1.0)
  crop_ratio: tuple = (0.75, 1.3333)
  flip: bool = False
  captions: str = "sample"
  num_captions: int = 1
  image_dtype: str = "uint8"
  normalize: str = "none"
  views: tuple = ()            # data.views: a second augmented view of the image

  def _captions(self, caption) -> list[str] | str:
    """Usable captions, or a string: why there are none."""
    items = list(caption) if isinstance(caption, (list, tuple, np.ndarray)) else [caption]
    good, why = [], "no caption"
    for c in items:
      if isinstance(c, (bytes, np.bytes_)):
        try:
          c = bytes(c).decode("utf-8")
        except UnicodeDecodeError:
          why = "caption is not UTF-8"
          continue
      if not isinstance(c, str) or not c.strip():
        why = "empty caption"
        continue
      good.append(c)
    return good or why

  def random_map(self, record, rng: np.random.Generator):
    extra = {k: np.int32(record[k]) for k in ("epoch", "source", GROUP_KEY) if k in record}
    if "_bad" in record:
      return {"_bad": record["_bad"], **extra}
    captions = self._captions(record["caption"])
    if isinstance(captions, str):
      return {"_bad": captions, **extra}
    image = record["image"]
    try:
      pixels = self._pixels(image, rng)
      view = (self._pixels(image, rng) if self.train and self.image_key in self.views
              else None)
    except Exception as e:  # PIL raises many types for broken or missing files.
      where = image if isinstance(image, str) else f"{len(image)} bytes" if isinstance(
          image, (bytes, bytearray)) else type(image).__name__
      return {"_bad": f"unreadable image ({where}): {e}", **extra}
    if view is not None:
      extra[f"{self.image_key}:view"] = view

    def example(text):
      return {self.image_key: pixels, self.text_key: self.tokenizer.encode(text),
              "label": np.int32(record.get("label", -1)), **extra}

    if self.captions == "all" and self.train:
      return {"_many": [example(c) for c in captions]}
    if self.captions == "k" and self.train:
      # 1-to-K: k captions of the record (without repeats while it has enough, so a short
      # record repeats its captions in a random order), the image once.
      order = rng.permutation(len(captions))
      picks = [captions[order[i % len(captions)]] for i in range(self.num_captions)]
      out = example(picks[0])
      out[self.text_key] = np.stack([self.tokenizer.encode(c) for c in picks])
      return out
    if self.captions == "sample" and self.train and len(captions) > 1:
      return example(captions[int(rng.integers(len(captions)))])
    return example(captions[0])

  def _pixels(self, image, rng):
    """One augmented (train) or centre-cropped (eval) view of the image, finalised."""
    if isinstance(image, np.ndarray):
      if self.train:
        pixels = transforms.random_resized_crop(image, self.image_size, rng, self.crop_scale,
                                                self.crop_ratio, self.flip)
      else:
        from PIL import Image
        pixels = transforms.resize_center_crop(Image.fromarray(image), self.image_size)
    elif self.train:
      pixels = transforms.decode_random_crop(image, self.image_size, rng, self.crop_scale,
                                             self.crop_ratio, self.flip)
    else:
      pixels = transforms.decode_center_crop(image, self.image_size)
    return transforms.finalize(np.ascontiguousarray(pixels), self.image_dtype, self.normalize)


class _SkipBadIterator(grain.DatasetIterator):
  """Drops {"_bad": ...} elements (the next good one carries how many were dropped in
  "skipped") and unrolls {"_many": [...]} into one element each.

  State: the parent's state before the element being unrolled plus how many of its parts
  were already returned, so a restore mid-element resumes at the next part."""

  def __init__(self, parent):
    super().__init__(parent)
    self._pending, self._before, self._taken = [], None, 0
    self._logged = 0

  def _log_bad(self, reason):
    self._logged += 1
    if self._logged <= 20 or self._logged % 1000 == 0:
      logging.warning("skipping a bad example (%d so far in this reader): %s", self._logged,
                      reason)

  def _fetch(self) -> int:
    """Pulls parent elements until a good one; fills _pending. Returns skipped count."""
    skipped = 0
    while True:
      before = self._parent.get_state()
      element = next(self._parent)
      if "_bad" in element:
        skipped += 1
        self._log_bad(element["_bad"])
        if skipped >= MAX_CONSECUTIVE_BAD:
          raise RuntimeError(
              f"{skipped} unreadable examples in a row (last: {element['_bad']}); the data "
              "is broken or misconfigured (check data.source / file patterns / keys)")
        continue
      parts = element["_many"] if "_many" in element else [element]
      if not parts:
        skipped += 1
        continue
      self._pending, self._before, self._taken = parts, before, 0
      return skipped

  def __next__(self):
    skipped = 0
    if self._taken >= len(self._pending):
      skipped = self._fetch()
    element = dict(self._pending[self._taken])
    self._taken += 1
    element["skipped"] = np.int32(skipped)
    for key in ("epoch", "source"):      # int32 for every source (ready records too)
      element[key] = np.int32(element.get(key, 0))
    return element

  def get_state(self):
    if self._taken >= len(self._pending):
      return {"parent": self._parent.get_state(), "taken": 0}
    return {"parent": self._before, "taken": self._taken}

  def set_state(self, state):
    if "parent" not in state:                 # a checkpoint from before this format
      state = {"parent": state, "taken": 0}
    self._parent.set_state(state["parent"])
    self._pending, self._before, self._taken = [], None, 0
    if state["taken"]:
      self._fetch()
      self._taken = state["taken"]


class SkipBad(grain.IterDataset):
  def __iter__(self):
    return _SkipBadIterator(self._parent.__iter__())


def preprocess_for(config, train: bool) -> Preprocess:
  image_key, text_key = modality_names(config)
  d = config.data
  return Preprocess(image_key=image_key, text_key=text_key, image_size=d.image_size,
                    tokenizer=tokenizer_lib.get_tokenizer(config), train=train,
                    crop_scale=tuple(d.crop_scale), crop_ratio=tuple(d.crop_ratio),
                    flip=d.flip, captions=d.captions, num_captions=d.num_captions,
                    image_dtype=d.image_dtype,
                    normalize=d.normalize, views=tuple(d.views))


@dataclasses.dataclass
class _Tag(grain.transforms.MapWithIndex):
  """Adds "epoch" (index // epoch length) and "source" (mixture index) to raw records."""
  epoch_length: int
  source_index: int

  def map_with_index(self, index, record):
    record = dict(record)
    record["epoch"] = index // self.epoch_length
    record["source"] = self.source_index
    return record


@dataclasses.dataclass
class _Group(grain.transforms.MapWithIndex):
  """Adds "group": the record's position in the global (mixed) stream modulo 2**31. Applied
  before the per-process slice, so it does not depend on the number of processes, and
  carried by every example the record yields (Preprocess copies it to each caption's)."""

  def map_with_index(self, index, record):
    record = dict(record)
    record[GROUP_KEY] = np.int32(index % GROUP_MODULUS)
    return record


def _global_stream(source, seed: int, source_index: int) -> grain.MapDataset:
  """One source's global stream: shuffled with a fresh order each epoch, repeated forever,
  tagged with epoch and source index. Every process builds the same stream."""
  ds = grain.MapDataset.source(source).shuffle(seed=seed).repeat(None)
  return ds.map_with_index(_Tag(len(source), source_index))


def train_dataset(config, process_index: int = 0, process_count: int = 1,
                  first_example: int = 0) -> grain.IterDataset:
  """Infinite per-process batches of config.batch_size // process_count examples.

  The global stream is each source reshuffled every epoch and repeated (sources mixed by
  weight); process p reads its elements first_example + p, + p + count, ... so processes
  are disjoint. Augmentation randomness is keyed by the global position, before the
  per-process slice, so an example is cropped the same way whatever the number of
  processes. `first_example` > 0 restarts the stream at a global position (resuming on a
  different number of processes)."""
  if config.batch_size % process_count:
    raise ValueError(f"config.batch_size {config.batch_size} is not divisible by the "
                     f"{process_count} processes")
  specs = source_specs(config, "train")
  parts = []
  for i, (kind, pattern, weight) in enumerate(specs):
    source = open_source(kind, pattern, config, "train")
    logging.info("train source %d: %r, weight %g", i, source, weight)
    parts.append(_global_stream(source, config.seed + 7919 * i, i))
  ds = parts[0] if len(parts) == 1 else grain.MapDataset.mix(parts, [w for _, _, w in specs])
  # Before the random map, which seeds each element by the same index: crops are unchanged.
  ds = ds.map_with_index(_Group())
  if not ready_source(config, "train"):
    ds = ds.random_map(preprocess_for(config, train=True), seed=config.seed + 1)
  ds = ds[first_example + process_index::process_count]
  local_batch = config.batch_size // process_count
  # Few reader threads: on small hosts more only fight the train step for cores.
  # The read-ahead buffer holds decoded images: capped so that large batches of 224-pixel
  # images do not hold gigabytes per worker.
  ds = SkipBad(ds.to_iter_dataset(grain.ReadOptions(
      num_threads=config.data.read_threads,
      prefetch_buffer_size=min(2 * local_batch, 256))))
  ds = ds.batch(local_batch, drop_remainder=True)
  if config.data.num_workers > 0:
    _mark_flags_parsed()
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=config.data.num_workers))
  return ds


def eval_arrays(config, max_examples: int | None = None, split: str = "eval") -> dict:
  """The whole held-out split (or the first `max_examples` of `split`) as numpy, with
  evaluation preprocessing (no augmentation): {modality: [N, ...], "label", "caption"}.

  Bad rows are dropped; "skipped" is their count. Eval sets are read once and kept in
  memory, so keep them to what fits (thousands, not millions).
  """
  source = make_source(config, split)
  n = len(source) if max_examples is None else min(max_examples, len(source))
  if ready_source(config, split):
    records = [source[i] for i in range(n)]
    out = {k: np.stack([r[k] for r in records]) for k in records[0]}
    out["skipped"] = 0
    return out
  prep = preprocess_for(config, train=False)
  rng = np.random.default_rng(0)
  examples, captions, skipped = [], [], 0
  for i in range(n):
    record = source[i]
    ex = prep.random_map(record, rng)
    if "_bad" in ex:
      skipped += 1
      logging.warning("eval: skipping row %d: %s", i, ex["_bad"])
      continue
    ex.pop("epoch", None)
    ex.pop("source", None)
    examples.append(ex)
    captions.append(prep._captions(record["caption"])[0])
  if not examples:
    raise ValueError(f"the eval split of {source!r} has no readable examples")
  out = {k: np.stack([e[k] for e in examples]) for k in examples[0]}
  out["caption"] = captions
  out["skipped"] = skipped
  return out


def classnames(config) -> tuple[str, ...] | None:
  """Zero-shot class names: the embedded dataset's, or config.eval.classnames' lines."""
  if config.data.source == "shapes":
    return shapes.CLASSNAMES
  if config.eval.classnames:
    with open(config.eval.classnames, encoding="utf-8") as f:
      return tuple(line.strip() for line in f if line.strip())
  return None


def _mark_flags_parsed():
  from absl import flags
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()
