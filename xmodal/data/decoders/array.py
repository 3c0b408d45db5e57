"""Arrays: `.npy` / `.npz` bytes or paths (loaded without pickle), numpy arrays and lists
of numbers (JSON lists, Parquet list columns) -> a numeric np.ndarray. A `.npz` must hold
one array (or name it `arr_0`)."""

import io
import zipfile

import numpy as np

from xmodal.data import bad
from xmodal.data.decoders import check_finite, describe, read_bytes

EXTENSIONS = ("npy", "npz")
EXTRA = ""


def sniff(data: bytes) -> bool:
  return data[:6] == b"\x93NUMPY" or data[:4] == b"PK\x03\x04"


def decode(value) -> np.ndarray:
  if isinstance(value, (list, tuple)):
    try:
      x = np.asarray(value, np.float32)
    except (TypeError, ValueError) as e:
      raise bad.BadData("wrong_shape", f"list of {len(value)} items is not a numeric "
                        f"array: {e}") from None
  elif isinstance(value, np.ndarray):
    x = value
  else:
    data = read_bytes(value)
    try:
      loaded = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
      text = str(e).lower()
      reason = "truncated" if ("truncat" in text or "size" in text or "eof" in text or
                               isinstance(e, EOFError)) else "unreadable"
      raise bad.BadData(reason, f"{describe(value)}: not a readable .npy/.npz ({e})") from None
    if isinstance(loaded, np.lib.npyio.NpzFile):
      with loaded:
        keys = loaded.files
        if not keys:
          raise bad.BadData("empty", f"{describe(value)}: .npz holds no array")
        key = "arr_0" if "arr_0" in keys else keys[0] if len(keys) == 1 else None
        if key is None:
          raise bad.BadData("wrong_shape", f"{describe(value)}: .npz holds {keys}; store one "
                            f"array (or arr_0)")
        x = loaded[key]
    else:
      x = loaded
  if x.dtype.kind not in "fiub":
    raise bad.BadData("unsupported", f"{describe(value)}: dtype {x.dtype} is not numeric")
  if x.size == 0:
    raise bad.BadData("empty", f"{describe(value)}: empty array {x.shape}")
  return check_finite(x, value)
