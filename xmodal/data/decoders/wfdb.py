"""PhysioNet WFDB records (ECG and other multi-channel signals) through the `wfdb`
package: the record's path (the `.hea` header, or its name without extension; the
signal files sit beside it) -> Sampled(values float32 [T, C] in physical units, rate).
WFDB reads files, so records in shards or ArrayRecord are stored as `.npy` arrays instead."""

import os

import numpy as np

from xmodal.data import bad
from xmodal.data.decoders import Sampled, check_finite, require

EXTENSIONS = ("hea",)
EXTRA = "signal"


def decode(value) -> Sampled:
  wfdb = require("wfdb", EXTRA, "wfdb")
  if not isinstance(value, str):
    raise bad.BadData("unsupported", "a WFDB record is read from its files: give the path "
                      "of its .hea header")
  base = value[:-4] if value.endswith(".hea") else value
  if not os.path.exists(base + ".hea"):
    raise bad.BadData("unreadable", f"{base}.hea: no such file")
  try:
    record = wfdb.rdrecord(base)
  except (ValueError, OSError, IndexError) as e:
    text = str(e).lower()
    reason = "truncated" if ("size" in text or "shape" in text or "length" in text) else (
        "unreadable")
    raise bad.BadData(reason, f"{value}: {e}") from None
  if record.p_signal is None or record.p_signal.size == 0:
    raise bad.BadData("empty", f"{value}: no samples")
  return Sampled(check_finite(record.p_signal.astype(np.float32), value), float(record.fs))
