"""Kind "volume": 3-D scans float32 [B, slices, size, size] -> every slice through a
1-channel patch encoder -> attention (MAP) pooling over slices (models/modalities.py
VolumeTower).

Record values: NIfTI files (decoder "nifti"), DICOM series (a folder, a list of slice
files or a multi-frame file; decoder "dicom"), both with the extra `volume`, or arrays
[D, H, W] (.npy). Preparation resamples the volume to [slices, size, size] (linear
interpolation along each axis) and standardises its intensities (zero mean, unit
variance per volume; a constant volume becomes zeros).
"""

import dataclasses

import numpy as np

from xmodal.fields import Field
from xmodal.towers import _common, _transformer

EXTENSIONS = ("nii.gz", "nii", "dcm", "npy")
DECODE = True

FIELDS = dict(
    **_common.transformer_fields(),
    slices=Field(8, "slices per volume", gt=0),
    size=Field(16, "slice side in voxels", gt=0),
    patch_size=Field(8, "voxels per patch side of a slice", gt=0),
    **_common.input_fields(),
)


def build(cfg, config, dtype, name):
  return _transformer.build("VolumeTower", cfg, dtype, name)


def input_spec(cfg, config):
  return (cfg.slices, cfg.size, cfg.size), np.dtype(np.float32)


def _axis_weights(n_in: int, n_out: int):
  """Linear interpolation of n_in samples at n_out centre-aligned positions:
  (lo [n_out], hi [n_out], w [n_out]) with out = (1 - w) * x[lo] + w * x[hi]."""
  pos = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
  lo = np.floor(pos).astype(np.int64)
  hi = np.minimum(lo + 1, n_in - 1)
  return lo, hi, (pos - lo).astype(np.float32)


def resample(volume: np.ndarray, shape) -> np.ndarray:
  """float32 [D, H, W] -> [d, h, w] by separable linear interpolation (centre-aligned)."""
  out = volume.astype(np.float32, copy=False)
  for axis, n in enumerate(shape):
    if out.shape[axis] == n:
      continue
    lo, hi, w = _axis_weights(out.shape[axis], n)
    wshape = [1] * out.ndim
    wshape[axis] = n
    w = w.reshape(wshape)
    out = np.take(out, lo, axis=axis) * (1 - w) + np.take(out, hi, axis=axis) * w
  return out


@dataclasses.dataclass(frozen=True)
class Prepare:
  """A volume [D, H, W] -> float32 [slices, size, size], standardised."""
  slices: int
  size: int

  def __call__(self, volume, train: bool, rng) -> np.ndarray:
    from xmodal.data import bad   # noqa: PLC0415
    volume = np.asarray(volume)
    if volume.ndim == 4 and volume.shape[-1] == 1:
      volume = volume[..., 0]
    if volume.ndim != 3:
      raise bad.BadData("wrong_shape", f"volume of shape {volume.shape}; expected [D, H, W]")
    x = resample(volume, (self.slices, self.size, self.size))
    std = float(x.std())
    return ((x - x.mean()) / std if std > 0 else np.zeros_like(x)).astype(np.float32)


def preparer(cfg, config) -> Prepare:
  return Prepare(cfg.slices, cfg.size)


def synthetic(cfg, config, labels, rng, num_classes):
  """A Gaussian blob at a per-class centre (+ noise): float32 [n, slices, size, size]."""
  s, d = cfg.size, cfg.slices
  centres = np.random.default_rng(1234).uniform(0.2, 0.8, (num_classes, 3))
  z, y, x = np.meshgrid(np.linspace(0, 1, d), np.linspace(0, 1, s), np.linspace(0, 1, s),
                        indexing="ij")
  c = centres[labels]
  blob = np.exp(-((z - c[:, 0, None, None, None]) ** 2 + (y - c[:, 1, None, None, None]) ** 2
                  + (x - c[:, 2, None, None, None]) ** 2) / 0.02)
  return (blob + rng.normal(0, 0.1, blob.shape)).astype(np.float32)
