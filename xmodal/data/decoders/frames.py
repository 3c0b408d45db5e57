"""A clip stored as separate images: a list of encoded frames (webdataset members
`KEY.0.jpg`, `KEY.1.jpg`, ... gathered in order into the field "frames", or a list of
image paths in a manifest) -> a clip that decodes only the frames asked for."""

import numpy as np

from xmodal.data import bad
from xmodal.data.decoders import describe

EXTENSIONS = ()
EXTRA = ""


class Frames:
  def __init__(self, items):
    self.items, self.num_frames = list(items), len(items)

  def frames(self, indices) -> np.ndarray:
    from xmodal.data import transforms   # noqa: PLC0415
    out = []
    for i in indices:
      try:
        out.append(np.asarray(transforms.decode(self.items[int(i)])))
      except bad.BadData:
        raise
      except Exception as e:  # PIL raises many types for broken files.
        raise bad.BadData("unreadable", f"frame {i} ({describe(self.items[int(i)])}): "
                          f"{e}") from None
    if len({f.shape for f in out}) > 1:
      raise bad.BadData("wrong_shape", f"frames of different sizes {sorted({f.shape for f in out})}")
    return np.stack(out)


def decode(value) -> Frames:
  if isinstance(value, np.ndarray) and value.ndim == 4:
    return ArrayFrames(value)
  return Frames(value)


class ArrayFrames:
  """uint8 [T, H, W, 3] already decoded."""

  def __init__(self, array):
    self.array, self.num_frames = array, len(array)

  def frames(self, indices) -> np.ndarray:
    return self.array[list(indices)]
