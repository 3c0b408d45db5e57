"""Kind "signal": 1-D multi-channel signals [B, length, channels] (ECG leads, sensors) ->
patches of patch_len steps (PatchTST style) -> transformer (models/modalities.py
SignalTower).

Record values: WFDB records (decoder "wfdb", extra `signal`) or arrays [T, C] / [T]
(.npy). Preparation checks the channel count, resamples to `sample_rate` when it is set
and the record says its rate, takes a random (train) or centre (eval) window of `length`
steps (zero-padding shorter signals) and standardises each channel.
"""

import dataclasses

import numpy as np

from xmodal.fields import Field
from xmodal.towers import _common, _transformer

EXTENSIONS = ("hea", "npy")
DECODE = True

FIELDS = dict(
    **_common.transformer_fields(),
    length=Field(128, "time steps per example", gt=0),
    channels=Field(1, "channels (leads)", gt=0),
    patch_len=Field(16, "time steps per patch", gt=0),
    sample_rate=Field(0, "Hz the tower reads; records at another rate are resampled; "
                      "0 = as stored", ge=0),
    **_common.input_fields(),
)


def build(cfg, config, dtype, name):
  return _transformer.build("SignalTower", cfg, dtype, name)


def input_spec(cfg, config):
  return (cfg.length, cfg.channels), np.dtype(np.float32)


@dataclasses.dataclass(frozen=True)
class Prepare:
  length: int
  channels: int
  sample_rate: int = 0

  def __call__(self, value, train: bool, rng) -> np.ndarray:
    from xmodal.data import bad, decoders   # noqa: PLC0415
    if isinstance(value, decoders.Sampled):
      x, rate = value.values, value.rate
    else:
      x, rate = np.asarray(value, np.float32), 0
    if x.ndim == 1:
      x = x[:, None]
    if x.ndim != 2 or x.shape[1] != self.channels:
      raise bad.BadData("wrong_shape", f"signal of shape {x.shape}; the tower reads "
                        f"[T, {self.channels}]")
    if self.sample_rate and rate and rate != self.sample_rate:
      from scipy import signal as sps   # noqa: PLC0415
      from fractions import Fraction   # noqa: PLC0415
      ratio = Fraction(self.sample_rate / rate).limit_denominator(1000)
      x = sps.resample_poly(x, ratio.numerator, ratio.denominator, axis=0)
    x = _transformer.crop_or_pad(x.astype(np.float32), self.length, train, rng)
    std = x.std(axis=0, keepdims=True)
    return ((x - x.mean(axis=0, keepdims=True)) / np.where(std > 0, std, 1)).astype(
        np.float32)


def preparer(cfg, config) -> Prepare:
  return Prepare(cfg.length, cfg.channels, cfg.sample_rate)


def synthetic(cfg, config, labels, rng, num_classes):
  t = np.arange(cfg.length) / cfg.length
  freqs = 2.0 + 3.0 * (labels % num_classes)
  phase = np.random.default_rng(1234).uniform(0, np.pi, cfg.channels)
  sig = np.sin(2 * np.pi * freqs[:, None, None] * t[None, :, None] + phase)
  return (sig + rng.normal(0, 0.3, sig.shape)).astype(np.float32)
