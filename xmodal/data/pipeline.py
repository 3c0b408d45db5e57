"""The grain input pipeline: source -> shuffle -> per-process shard -> decode/augment/tokenize
-> drop-and-count bad rows -> per-process batches.

Training order is a pure function of (config.seed, process index, process count): the
source is shuffled globally with a fresh permutation each epoch, process p reads every
`count`-th element from p, and augmentation randomness is seeded per element. The iterator
is a grain `DatasetIterator` whose state (a few integers) is saved in every checkpoint, so a
resumed run reads exactly the batches an uninterrupted one would.

Each batch is {image modality: uint8 [b, S, S, 3], text modality: int32 [b, L],
"label": int32 [b], "skipped": int32 [b]}, where the modality keys are the tower names
and "skipped" counts the unreadable rows dropped just before each example.
"""

import dataclasses
import logging

import grain
import numpy as np

from xmodal.data import manifest, shapes, tokenizer as tokenizer_lib, transforms


def modality_names(config) -> tuple[str, str]:
  """(image modality, text modality): the names of the 'vit' and 'text' towers."""
  by_kind = {cfg.kind: name for name, cfg in config.towers.items()}
  return by_kind["vit"], by_kind["text"]


def make_source(config, split: str):
  """The random-access source for `split` ("train" or "eval")."""
  d = config.data
  if d.source == "shapes":
    size = d.shapes_train_size if split == "train" else d.shapes_eval_size
    return shapes.ShapesSource(split, size, d.image_size)
  pattern = d.train_manifest if split == "train" else d.eval_manifest
  return manifest.ManifestSource(pattern, d.image_key, d.caption_key, d.label_key)


@dataclasses.dataclass
class Preprocess(grain.transforms.RandomMap):
  """Record -> example, or {"_bad": reason} when the image or caption cannot be used.

  train=True: random resized crop; train=False: resize + center crop (rng unused).
  """
  image_key: str
  text_key: str
  image_size: int
  context_length: int
  train: bool
  crop_scale: tuple = (0.8, 1.0)
  crop_ratio: tuple = (0.75, 1.3333)

  def random_map(self, record, rng: np.random.Generator):
    caption = record["caption"]
    if isinstance(caption, bytes):
      try:
        caption = caption.decode("utf-8")
      except UnicodeDecodeError:
        return {"_bad": "caption is not UTF-8"}
    if not isinstance(caption, str) or not caption.strip():
      return {"_bad": "empty caption"}
    image = record["image"]
    try:
      if isinstance(image, np.ndarray):
        from PIL import Image
        img = Image.fromarray(image)
      else:
        img = transforms.decode(image, self.image_size)
    except Exception as e:  # PIL raises many types for broken files.
      return {"_bad": f"unreadable image {image if isinstance(image, str) else ''}: {e}"}
    if self.train:
      pixels = transforms.random_resized_crop(img, self.image_size, rng, self.crop_scale,
                                              self.crop_ratio)
    else:
      pixels = transforms.resize_center_crop(img, self.image_size)
    tokens = tokenizer_lib.ByteTokenizer(self.context_length).encode(caption)
    return {self.image_key: pixels, self.text_key: tokens,
            "label": np.int32(record.get("label", -1))}


class _SkipBadIterator(grain.DatasetIterator):
  """Drops {"_bad": ...} elements; the next good one carries how many were dropped."""

  def __init__(self, parent):
    super().__init__(parent)

  def __next__(self):
    skipped = 0
    while True:
      element = next(self._parent)
      if "_bad" not in element:
        element["skipped"] = np.int32(skipped)
        return element
      skipped += 1
      logging.warning("skipping a bad example: %s", element["_bad"])

  def get_state(self):
    return self._parent.get_state()

  def set_state(self, state):
    self._parent.set_state(state)


class SkipBad(grain.IterDataset):
  def __iter__(self):
    return _SkipBadIterator(self._parent.__iter__())


def preprocess_for(config, train: bool) -> Preprocess:
  image_key, text_key = modality_names(config)
  d = config.data
  return Preprocess(image_key=image_key, text_key=text_key, image_size=d.image_size,
                    context_length=d.context_length, train=train,
                    crop_scale=tuple(d.crop_scale), crop_ratio=tuple(d.crop_ratio))


def train_dataset(config, process_index: int = 0, process_count: int = 1,
                  first_example: int = 0) -> grain.IterDataset:
  """Infinite per-process batches of config.batch_size // process_count examples.

  The global stream is the source reshuffled every epoch and repeated; process p reads its
  elements first_example + p, + p + count, ... `first_example` > 0 restarts the stream at
  a global position (resuming on a different number of processes)."""
  if config.batch_size % process_count:
    raise ValueError(f"config.batch_size {config.batch_size} is not divisible by the "
                     f"{process_count} processes")
  ds = grain.MapDataset.source(make_source(config, "train"))
  # Augmentation randomness is keyed by the global stream position (before the per-process
  # slice), so an example is cropped the same way whatever the number of processes.
  ds = ds.shuffle(seed=config.seed).repeat(None)
  ds = ds.random_map(preprocess_for(config, train=True), seed=config.seed + 1)
  ds = ds[first_example + process_index::process_count]
  # Few reader threads: on small hosts more only fight the train step for cores.
  local_batch = config.batch_size // process_count
  ds = SkipBad(ds.to_iter_dataset(grain.ReadOptions(num_threads=2,
                                                    prefetch_buffer_size=2 * local_batch)))
  ds = ds.batch(local_batch, drop_remainder=True)
  if config.data.num_workers > 0:
    _mark_flags_parsed()
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=config.data.num_workers))
  return ds


def eval_arrays(config, max_examples: int | None = None) -> dict:
  """The whole held-out split as numpy: {image modality, text modality, "label", "caption"}.

  Bad rows are dropped; "skipped" is their count. Eval sets are read once and kept in
  memory, so keep them to what fits (thousands, not millions).
  """
  source = make_source(config, "eval")
  n = len(source) if max_examples is None else min(max_examples, len(source))
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
    examples.append(ex)
    captions.append(record["caption"])
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
