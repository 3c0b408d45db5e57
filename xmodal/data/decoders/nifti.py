"""NIfTI-1/2 volumes (`.nii`, `.nii.gz`) through nibabel: bytes or a path -> float32
[D, H, W] with the third voxel axis (slices, usually axial) first and the scaling of the
header (scl_slope / scl_inter) applied. 4-D files with one volume are squeezed."""

import gzip

import numpy as np

from xmodal.data import bad
from xmodal.data.decoders import check_finite, describe, read_bytes, require

EXTENSIONS = ("nii", "nii.gz")
EXTRA = "volume"


def sniff(data: bytes) -> bool:
  return len(data) >= 348 and data[344:348] in (b"n+1\x00", b"ni1\x00", b"n+2\x00")


def decode(value) -> np.ndarray:
  nib = require("nibabel", EXTRA, "nifti")
  data = read_bytes(value)
  try:
    if data[:2] == b"\x1f\x8b":
      data = gzip.decompress(data)
    image = nib.Nifti1Image.from_bytes(data) if data[344:347] != b"n+2" else (
        nib.Nifti2Image.from_bytes(data))
    volume = np.asarray(image.get_fdata(dtype=np.float32))
  except (EOFError, gzip.BadGzipFile) as e:
    raise bad.BadData("truncated", f"{describe(value)}: {e}") from None
  except (ValueError, OSError, nib.filebasedimages.ImageFileError) as e:
    text = str(e).lower()
    reason = "truncated" if ("expected" in text or "bytes" in text) else "unreadable"
    raise bad.BadData(reason, f"{describe(value)}: {e}") from None
  if volume.ndim == 4 and volume.shape[3] == 1:
    volume = volume[..., 0]
  if volume.ndim != 3:
    raise bad.BadData("wrong_shape", f"{describe(value)}: a {volume.ndim}-D image "
                      f"{volume.shape}, expected a 3-D volume")
  if volume.size == 0:
    raise bad.BadData("empty", f"{describe(value)}: empty volume")
  return check_finite(np.ascontiguousarray(volume.transpose(2, 1, 0)), value)
