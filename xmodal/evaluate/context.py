"""What an evaluator sees: the model's embeddings of a task's data, read once and shared.

`Context.embedded(task, split, towers, ...)` reads the task's split (xmodal/evaluate/data.py)
in chunks, embeds each chunk with the towers asked for, and returns an `Embedded`. Within
one evaluation round (one set of params) embeddings are cached by (data, split, rows asked
for), so tasks on the same data share them; across rounds the prepared inputs of a split
are kept in memory when they fit INPUT_CACHE_BYTES (a held-out split evaluated every few
hundred steps is decoded once per run), otherwise read again chunk by chunk, so a split of
any size needs memory only for one chunk of inputs plus its embeddings [N, D].
"""

import collections
import dataclasses

import numpy as np

from xmodal.data import tokenizer as tokenizer_lib
from xmodal.evaluate import data as data_lib
from xmodal.evaluate.kinds import TaskError

# Prepared inputs kept across evaluation rounds per split read (uint8 images: ~150k rows of
# 224 px, or ~1M at 32 px); larger splits are read again each round.
INPUT_CACHE_BYTES = 1 << 30


@dataclasses.dataclass
class Embedded:
  """One split of a task's data, embedded.

  z {modality: float32 [N, D]}, labels int32 [N] (-1 = none), fields {name: [N, ...]},
  index int64 [N] (rows in the source), keys [N] strings; with captions: caption_z
  float32 [M, D] (every usable caption of every row, embedded by the text tower) and
  caption_row int [M] (the row each caption belongs to); skipped: rows dropped, and
  reasons: how many for each reason (xmodal/data/bad.py)."""
  z: dict
  labels: np.ndarray
  fields: dict
  index: np.ndarray
  keys: list
  skipped: int
  caption_z: np.ndarray | None = None
  caption_row: np.ndarray | None = None
  reasons: dict = dataclasses.field(default_factory=dict)

  def __len__(self):
    return len(self.labels)

  def counts(self) -> dict:
    """{"examples", "skipped", "skipped/<reason>" for each reason that occurred}."""
    return {"examples": len(self), "skipped": self.skipped,
            **{f"skipped/{r}": n for r, n in sorted(self.reasons.items())}}


class Context:
  """config: the run's config; embedder: xmodal.embed.Embedder (its mesh is the mesh
  evaluators shard over); params: the model's params this round."""

  def __init__(self, config, embedder, params=None, step: int = 0):
    self.config, self.embedder, self.params, self.step = config, embedder, params, step
    self.mesh = embedder.mesh
    self._readers = {}       # (data key, split) -> data.Reader
    self._inputs = {}        # read key -> list of Chunk (kept across rounds)
    self._embedded = {}      # read key -> Embedded (this round)
    self._prompts = {}       # (modality, texts) -> [N, D] (this round)
    self.nonfinite = 0       # rows with a non-finite embedding, this round
    self.where = "eval.tasks"  # "eval.tasks.<name>" of the task running (for messages)
    self._tokenizer = None

  def new_round(self, params, step: int) -> None:
    """Next params: embeddings are computed again, prepared inputs kept."""
    self.params, self.step = params, step
    self._embedded, self._prompts, self.nonfinite = {}, {}, 0

  def task_config(self, task):
    return data_lib.task_config(self.config, task)

  def reader(self, task, split: str) -> data_lib.Reader:
    key = (data_lib.data_key(task), split)
    if key not in self._readers:
      self._readers[key] = data_lib.Reader(self.task_config(task), split)
    return self._readers[key]

  def tower(self, task, field: str, kind: str | None = None) -> str:
    """The tower a task names in `field`, or (empty) the one tower of `kind`, or the
    first tower; TaskError if the model has no such tower."""
    name = task.get(field, "")
    towers = self.config.towers
    if name:
      if name not in towers:
        raise TaskError(f"config.{self.where}.{field}: no tower {name!r} (towers: "
                        f"{list(towers)})")
      return name
    if kind is None:
      return next(iter(towers))
    found = [m for m, t in towers.items() if t.kind == kind]
    if len(found) != 1:
      raise TaskError(f"config.{self.where}.{field}: name the tower ({len(found)} "
                      f"towers of kind {kind!r} among {list(towers)})")
    return found[0]

  def embedded(self, task, split: str = "eval", towers=(), fields=(), captions: bool = False,
               limit: int | None = None) -> Embedded:
    """The task's `split`, embedded by `towers`, with the record `fields` and (captions)
    every caption embedded by the text tower. `limit` rows (default: task.max_examples for
    the evaluation split; 0 = all) drawn at random, the same each time."""
    if limit is None:
      limit = task.get("max_examples", 0) if split == "eval" else 0
    towers, fields = tuple(sorted(towers)), tuple(sorted(fields))
    key = (data_lib.data_key(task), split, towers, fields, captions, limit)
    if key in self._embedded:
      return self._embedded[key]
    # Another read of the same rows that dropped nothing has every row this one would.
    for other_key, other in self._embedded.items():
      if (other_key[:2] == key[:2] and other_key[5] == limit and other.skipped == 0
          and set(towers) <= set(other.z) and set(fields) <= set(other.fields)
          and (not captions or other.caption_z is not None)):
        return other
    reader = self.reader(task, split)
    text = self._text_tower() if captions else None
    z = {t: [] for t in towers}
    caption_z, caption_row = [], []
    labels, index, keys, extra, skipped, offset = [], [], [], {f: [] for f in fields}, 0, 0
    reasons = collections.Counter()
    for chunk in self._chunks(key, reader, towers, fields, captions, limit):
      rows = chunk.rows
      for t in towers:
        z[t].append(self._embed(t, rows[t]))
      if captions:
        flat = [c for cs in rows["captions"] for c in cs]
        caption_z.append(self._embed(text, reader.tokenize(flat)) if flat else None)
        caption_row.append(offset + np.repeat(np.arange(len(chunk)),
                                              [len(cs) for cs in rows["captions"]]))
      labels.append(rows["label"])
      index.append(rows["index"])
      keys.extend(rows["key"])
      for f in fields:
        extra[f].append(rows[f])
      skipped += chunk.skipped
      reasons.update(chunk.reasons)
      offset += len(chunk)
    if offset == 0:
      raise TaskError(f"config.{self.where}: no usable rows in the {split} split of "
                      f"{reader!r} ({skipped} skipped)")
    out = Embedded(z={t: np.concatenate([v for v in z[t] if len(v)]) for t in towers},
                   labels=np.concatenate(labels), index=np.concatenate(index), keys=keys,
                   fields={f: np.concatenate([v for v in extra[f] if len(v)]) for f in fields},
                   skipped=skipped, reasons=dict(reasons))
    if captions:
      out.caption_z = np.concatenate([c for c in caption_z if c is not None])
      out.caption_row = np.concatenate(caption_row)
    self._embedded[key] = out
    return out

  def own_embeddings(self, towers) -> dict | None:
    """{tower: [N, D]} of the run's own held-out split (a task with no `data`), if this
    round embedded it with `towers`."""
    own = data_lib.data_key({})
    for key, emb in self._embedded.items():
      if key[0] == own and key[1] == "eval" and all(t in emb.z for t in towers):
        return emb.z
    return None

  def _chunks(self, key, reader, towers, fields, captions, limit):
    """Chunks of prepared rows: from memory, or read (and kept if they fit)."""
    if key in self._inputs:
      yield from self._inputs[key]
      return
    indices = reader.sample(limit)
    size = max(self.embedder.batch_size * 8, 1024)
    kept, used = [], 0
    for start in range(0, len(indices), size):
      chunk = reader.read(indices[start:start + size], towers, fields, captions)
      if kept is not None:
        used += sum(np.asarray(v).nbytes for k, v in chunk.rows.items()
                    if k not in ("captions", "key"))
        kept = kept + [chunk] if used <= INPUT_CACHE_BYTES else None
      yield chunk
    if kept is not None:
      self._inputs[key] = kept

  def _text_tower(self) -> str:
    found = [m for m, t in self.config.towers.items() if t.kind == "text"]
    if len(found) != 1:
      raise TaskError(f"several captions per row need one 'text' tower, the model has "
                      f"{found or 'none'}")
    return found[0]

  def _embed(self, modality: str, inputs) -> np.ndarray:
    z = self.embedder(self.params, modality, inputs)
    self.nonfinite += int(np.sum(~np.all(np.isfinite(z), axis=1))) if len(z) else 0
    return z

  def embed_texts(self, modality: str, texts) -> np.ndarray:
    """Strings -> [N, D] embeddings by the text tower `modality` (tokenized as the run
    tokenizes), cached this round."""
    key = (modality, tuple(texts))
    if key not in self._prompts:
      if self._tokenizer is None:
        self._tokenizer = tokenizer_lib.get_tokenizer(self.config)
      ids = self._tokenizer.encode_batch(list(texts))
      self._prompts[key] = self.embedder(self.params, modality, ids)
    return self._prompts[key]
