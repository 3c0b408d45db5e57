"""Bad data: why a row is skipped, and how the pipeline counts it.

A source or decoder that cannot use a row never raises into the training loop: it returns
`bad(reason, detail)`, a record {"_bad": detail, "_reason": reason}, or raises `BadData`
inside a decoder, which the pipeline turns into such a record. The pipeline drops these
rows and counts them per reason (batch["skipped_reasons"]: int32 [b, len(REASONS)], logged
as `data/skipped/<reason>` beside the total `data/skipped`). `detail` names the file and,
where there is one, the line, sample or member, so a warning in the log leads to the row.
"""

import numpy as np

# Every reason a row may be skipped for; the index is the column of batch["skipped_reasons"].
REASONS = (
    "unreadable",          # the file or bytes cannot be decoded (or do not exist)
    "truncated",           # cut short: a truncated tar member or shard, a short file
    "empty",               # no content: an empty caption, a clip of zero samples or frames
    "not_utf8",            # text that is not valid UTF-8 (raw bytes, lone surrogates)
    "bad_row",             # a manifest line that cannot be parsed (broken JSON, bad label)
    "missing_field",       # the record lacks the field a tower reads
    "wrong_shape",         # an array of the wrong rank, length or channel count
    "nonfinite",           # NaN or inf values
    "wrong_sample_rate",   # audio at another rate where resampling is off
    "unsupported",         # a format or pixel mode the decoder cannot map faithfully
    "too_large",           # an image whose header holds more than data.max_image_pixels
)
_INDEX = {r: i for i, r in enumerate(REASONS)}


class BadData(Exception):
  """A row that cannot be used. `reason` is one of REASONS; `detail` names file and row."""

  def __init__(self, reason: str, detail: str):
    if reason not in _INDEX:
      raise ValueError(f"unknown skip reason {reason!r}; known: {REASONS}")
    super().__init__(f"{reason}: {detail}")
    self.reason, self.detail = reason, detail


def bad(reason: str, detail: str) -> dict:
  """The record a source or the preprocessing returns for an unusable row."""
  if reason not in _INDEX:
    raise ValueError(f"unknown skip reason {reason!r}; known: {REASONS}")
  return {"_bad": detail, "_reason": reason}


def reason_of(record: dict) -> str:
  """The reason of a bad record ("unreadable" for records written before reasons)."""
  return record.get("_reason", "unreadable")


def counts(reasons) -> np.ndarray:
  """[reason, ...] -> int32 [len(REASONS)] counts."""
  out = np.zeros(len(REASONS), np.int32)
  for r in reasons:
    out[_INDEX[r]] += 1
  return out


def named(counts_vector) -> dict:
  """int [len(REASONS)] -> {"data/skipped/<reason>": count} for the reasons that occurred."""
  return {f"data/skipped/{r}": int(c) for r, c in zip(REASONS, counts_vector) if c}
