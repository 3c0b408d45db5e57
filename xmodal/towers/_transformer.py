"""The shared build of the token-transformer kinds (audio, video, volume, vector, signal):
their Flax modules live in xmodal/models/modalities.py."""


def build(module_name: str, cfg, dtype, name):
  from xmodal.models import modalities   # noqa: PLC0415 (config code never imports models)
  return getattr(modalities, module_name)(cfg, dtype, name=name)


def crop_or_pad(x, length: int, train: bool, rng, pad_value=0.0):
  """x [N, ...] -> [length, ...]: a random window (train) or the centre one (eval) of a
  longer x; a shorter x is padded at the end with pad_value."""
  import numpy as np   # noqa: PLC0415
  n = len(x)
  if n >= length:
    start = int(rng.integers(0, n - length + 1)) if train else (n - length) // 2
    return x[start:start + length]
  pad = np.full((length - n,) + x.shape[1:], pad_value, x.dtype)
  return np.concatenate([x, pad])
