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
text modality: int32 [b, L], "label": int32 [b], "skipped": int32 [b], "epoch": int32 [b],
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
import os
import signal

import grain
import numpy as np

from xmodal import towers as towers_lib
from xmodal.data import bad as bad_lib, decoders
from xmodal.data import shapes, source_kinds, sources
from xmodal.towers import text as text_kind

# Sources whose records are already tower inputs ({modality: array, "label"}): no decoding,
# augmentation or tokenizing, any towers.
READY_SOURCES = source_kinds.ready_kinds()

# batch[GROUP_KEY]: int32 group ids, the record's global stream position modulo
# GROUP_MODULUS (int32; positions within one batch never lie 2**31 apart).
GROUP_KEY = "group"
GROUP_MODULUS = 2 ** 31

# batch[SKIPPED_REASONS_KEY]: int32 [b, len(bad.REASONS)], the rows dropped just before each
# example, by reason (batch["skipped"] is their sum).
SKIPPED_REASONS_KEY = "skipped_reasons"

SOURCE_KINDS = source_kinds.mixable_kinds()     # the kinds a mixture may draw from
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
    if not colon or kind not in SOURCE_KINDS:
      raise ValueError(f"mixture entry {entry!r}: expected KIND:PATTERN[@WEIGHT] with KIND "
                       f"in {SOURCE_KINDS}")
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
  """One random-access source of `kind` over `pattern` (a tfds split for "tfds"); the kind's
  module in xmodal/data/source_kinds opens it."""
  return source_kinds.get(kind).open(pattern, config, split)


def source_specs(config, split: str) -> list[tuple[str, str, float]]:
  """[(kind, pattern, weight)] that make up `split` ("train" or "eval")."""
  d = config.data
  if split == "train" and d.source == "mixture":
    return parse_mixture(d.mixture)
  kind = d.source if split == "train" else (d.eval_source or d.source)
  return [(kind, source_kinds.get(kind).where(config, split)[1], 1.0)]


def make_source(config, split: str):
  """The random-access source for `split` (the first component of a training mixture)."""
  kind, pattern, _ = source_specs(config, split)[0]
  return open_source(kind, pattern, config, split)


@dataclasses.dataclass(frozen=True)
class TowerInput:
  """How one tower is fed from a record: its record `field` (plus the kind's extensions to
  look for when the field is the default and absent, e.g. a webdataset "wav" member for an
  audio tower), the decoder ("auto", a decoder name, or None: the kind reads raw values)
  and the kind's preparer (decoded value, train, rng) -> tower input."""
  modality: str
  field: str
  extensions: tuple
  decoder: str | None
  prepare: object


def tower_inputs(config) -> tuple[TowerInput, ...]:
  """The TowerInput of every tower, text towers last (caption sampling then draws from an
  element's rng after the image crop, so crops and captions are as they always were)."""
  out = []
  for name, cfg in config.towers.items():
    if cfg.get("input"):            # a teacher or reference tower reads another's input
      continue
    cfg = towers_lib.with_defaults(cfg)
    module = towers_lib.get(cfg.kind)
    field = towers_lib.default_field(name, cfg)
    extensions = () if cfg.get("field") else tuple(getattr(module, "EXTENSIONS", ()))
    decoder = cfg.get("decoder", "auto") if getattr(module, "DECODE", False) else None
    out.append(TowerInput(name, field, extensions, decoder, module.preparer(cfg, config)))
  return tuple(sorted(out, key=lambda t: getattr(towers_lib.get(config.towers[t.modality].kind),
                                                 "PREPARE_LAST", False)))


def required_fields(config) -> tuple[str, ...]:
  """The record fields a source must provide (checked as it reads a row): the fields set
  in the config and the kinds' named defaults ("image", "caption"), which every source of
  image/caption records provides; other defaults may be found by extension instead."""
  out = []
  for name, cfg in config.towers.items():
    if cfg.get("input"):
      continue
    if cfg.get("field") or hasattr(towers_lib.get(cfg.kind), "DEFAULT_FIELD"):
      out.append(towers_lib.default_field(name, cfg))
  return tuple(out)


def _lookup(record: dict, tower: TowerInput):
  """(key, value) of the tower's field in the record, or (field, None)."""
  value = record.get(tower.field)
  if value is not None:
    return tower.field, value
  for ext in tower.extensions:
    if record.get(ext) is not None:
      return ext, record[ext]
  return tower.field, None


@dataclasses.dataclass
class Preprocess(grain.transforms.RandomMap):
  """Record -> example {modality: tower input, "label"}, or a bad record ({"_bad": why,
  "_reason": one of bad.REASONS}) when a tower's field is missing or cannot be used.

  Each tower's value is looked up (`TowerInput.field`), decoded (xmodal/data/decoders)
  where the kind decodes, and prepared by its kind (xmodal/towers): e.g. train=True a
  random resized crop (+ flip) of an image, train=False the centre crop. A text tower with
  data.captions="all" yields {"_many": [one example per caption]} (same pixels), which
  `SkipBad` unrolls. A relative path in a manifest resolves against the manifest's folder.
  """
  inputs: tuple
  train: bool
  views: tuple = ()     # data.views: towers that also get a second, independent view

  def random_map(self, record, rng: np.random.Generator):
    extra = {k: np.int32(record[k]) for k in ("epoch", "source", GROUP_KEY) if k in record}
    if "_bad" in record:
      return {**record, **extra}
    where = f" ({record['_where']})" if "_where" in record else ""
    out, many = {}, None
    for tower in self.inputs:
      key, value = _lookup(record, tower)
      if value is None:
        fields = sorted(k for k in record if not k.startswith("_"))
        return {**bad_lib.bad("missing_field", f"no {tower.field!r} field for tower "
                              f"{tower.modality!r}{where}; the record has {fields}"), **extra}
      if isinstance(value, str) and tower.decoder is not None and "_dir" in record:
        value = os.path.join(record["_dir"], value)
      try:
        if tower.decoder is not None:
          value = decoders.decode(value, tower.decoder, key)
        x = tower.prepare(value, self.train, rng)
        if self.train and tower.modality in self.views:   # SLIP/TCL: a second augmentation
          out[f"{tower.modality}:view"] = tower.prepare(value, True, rng)
      except bad_lib.BadData as e:
        return {**bad_lib.bad(e.reason, f"{tower.modality}: {e.detail}{where}"), **extra}
      except decoders.MissingExtra:
        raise
      except Exception as e:  # PIL and the decoders' libraries raise many types on bad files
        return {**bad_lib.bad("unreadable", f"{tower.modality}: unreadable "
                              f"{decoders.describe(value)}{where}: {e}"), **extra}
      if isinstance(x, text_kind.Many):
        many = (tower.modality, x)
      else:
        out[tower.modality] = x
    out["label"] = np.int32(record.get("label", -1))
    out.update(extra)
    if many is not None:
      return {"_many": [{**out, many[0]: x} for x in many[1]]}
    return out


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

  def _fetch(self) -> list[str]:
    """Pulls parent elements until a good one; fills _pending. Returns the skipped rows'
    reasons."""
    skipped = []
    while True:
      before = self._parent.get_state()
      element = next(self._parent)
      if "_bad" in element:
        skipped.append(bad_lib.reason_of(element))
        self._log_bad(f"{skipped[-1]}: {element['_bad']}")
        if len(skipped) >= MAX_CONSECUTIVE_BAD:
          raise sources.SourceError(
              f"{len(skipped)} unreadable examples in a row (last: {element['_bad']}); the data "
              "is broken or misconfigured (check data.source / file patterns / keys)")
        continue
      parts = element["_many"] if "_many" in element else [element]
      if not parts:
        skipped.append("empty")
        continue
      self._pending, self._before, self._taken = parts, before, 0
      return skipped

  def __next__(self):
    skipped = []
    if self._taken >= len(self._pending):
      skipped = self._fetch()
    element = dict(self._pending[self._taken])
    self._taken += 1
    element["skipped"] = np.int32(len(skipped))
    element[SKIPPED_REASONS_KEY] = bad_lib.counts(skipped)
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
  return Preprocess(tower_inputs(config), train, tuple(config.data.get("views", ())))


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
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=config.data.num_workers),
                        worker_init_fn=_ignore_ctrl_c)
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
  text_input = next((t for t in prep.inputs if config.towers[t.modality].kind == "text"),
                    None)
  rng = np.random.default_rng(0)
  examples, captions, skipped = [], [], []
  for i in range(n):
    record = source[i]
    ex = prep.random_map(record, rng)
    if "_bad" in ex:
      skipped.append(bad_lib.reason_of(ex))
      logging.warning("eval: skipping row %d (%s): %s", i, skipped[-1], ex["_bad"])
      continue
    ex.pop("epoch", None)
    ex.pop("source", None)
    examples.append(ex)
    if text_input is not None:
      captions.append(text_kind.usable_captions(_lookup(record, text_input)[1])[0])
  if not examples:
    raise sources.SourceError(f"the eval split of {source!r} has no readable examples")
  out = {k: np.stack([e[k] for e in examples]) for k in examples[0]}
  if text_input is not None:
    out["caption"] = captions
  out["skipped"] = len(skipped)
  out["skipped_reasons"] = bad_lib.named(bad_lib.counts(skipped))
  return out


def classnames(config) -> tuple[str, ...] | None:
  """Zero-shot class names: config.eval.classnames' lines, else the embedded dataset's when
  the eval split is `shapes`."""
  if config.eval.classnames:
    with open(config.eval.classnames, encoding="utf-8") as f:
      return tuple(line.strip() for line in f if line.strip())
  if (config.data.eval_source or config.data.source) == "shapes":
    return shapes.CLASSNAMES
  return None


def _ignore_ctrl_c(worker_index: int, worker_count: int) -> None:
  """In each grain worker: a terminal's Ctrl-C goes to the whole process group; only the
  main process acts on it (xmodal/interrupt.py), and it stops the workers itself."""
  signal.signal(signal.SIGINT, signal.SIG_IGN)


def _mark_flags_parsed():
  from absl import flags
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()
