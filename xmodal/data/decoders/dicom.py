"""DICOM series through pydicom: a folder of slice files, a list of slice files (paths or
bytes), or one multi-frame file -> float32 [D, H, W] in Hounsfield-style units (the
RescaleSlope / RescaleIntercept of each slice applied), slices ordered along the scan
axis (ImagePositionPatient projected on the slice normal, else InstanceNumber)."""

import io
import os

import numpy as np

from xmodal.data import bad
from xmodal.data.decoders import check_finite, describe, read_bytes, require

EXTENSIONS = ("dcm", "dicom")
EXTRA = "volume"


def sniff(data: bytes) -> bool:
  return data[128:132] == b"DICM"


def _slices(value) -> list:
  if isinstance(value, str) and os.path.isdir(value):
    return sorted(os.path.join(value, n) for n in os.listdir(value) if not n.startswith("."))
  return list(value) if isinstance(value, (list, tuple)) else [value]


def _position(ds) -> float:
  try:
    orient = np.asarray(ds.ImageOrientationPatient, np.float64)
    normal = np.cross(orient[:3], orient[3:])
    return float(np.dot(normal, np.asarray(ds.ImagePositionPatient, np.float64)))
  except AttributeError:
    return float(getattr(ds, "InstanceNumber", 0))


def decode(value) -> np.ndarray:
  pydicom = require("pydicom", EXTRA, "dicom")
  items = _slices(value)
  if not items:
    raise bad.BadData("empty", f"{describe(value)}: no DICOM files")
  slices = []
  for item in items:
    try:
      ds = pydicom.dcmread(io.BytesIO(read_bytes(item)))
      pixels = ds.pixel_array.astype(np.float32)
    except (pydicom.errors.InvalidDicomError, AttributeError, KeyError) as e:
      raise bad.BadData("unreadable", f"{describe(item)}: not a DICOM image ({e})") from None
    except (ValueError, EOFError, OSError) as e:   # pixel data shorter than the header says
      raise bad.BadData("truncated", f"{describe(item)}: {e}") from None
    pixels = pixels * float(getattr(ds, "RescaleSlope", 1)) + float(
        getattr(ds, "RescaleIntercept", 0))
    slices.append((_position(ds), pixels))
  if len(slices) == 1 and slices[0][1].ndim == 3:  # one multi-frame file
    volume = slices[0][1]
  else:
    shapes = {s.shape for _, s in slices}
    if len(shapes) > 1 or slices[0][1].ndim != 2:
      raise bad.BadData("wrong_shape", f"{describe(value)}: slices of shapes {sorted(shapes)}")
    volume = np.stack([s for _, s in sorted(slices, key=lambda p: p[0])])
  return check_finite(volume, value)
