"""Encoded video files (MP4, WebM, MKV, AVI, MOV) through FFmpeg's libraries (PyAV):
bytes or a path -> a `Clip` that knows its frame count and decodes only the frames asked
for (the video tower kind samples `frames` of them), as uint8 RGB [k, H, W, 3]."""

import io

import numpy as np

from xmodal.data import bad
from xmodal.data.decoders import describe, read_bytes, require

EXTENSIONS = ("mp4", "m4v", "webm", "mkv", "avi", "mov")
EXTRA = "video"


def sniff(data: bytes) -> bool:
  return data[4:8] == b"ftyp" or data[:4] == b"\x1aE\xdf\xa3" or (
      data[:4] == b"RIFF" and data[8:12] == b"AVI ")


class Clip:
  """Frames of one encoded video. `num_frames` comes from the container (or, when it does
  not say, from decoding once); `frames(indices)` decodes up to the last index asked for."""

  def __init__(self, value):
    self._av = require("av", EXTRA, "video")
    self.value, self._data = value, read_bytes(value)
    self._cache = None
    try:
      with self._open() as container:
        if not container.streams.video:
          raise bad.BadData("unreadable", f"{describe(value)}: no video stream (a truncated "
                            f"file or audio only)")
        self.num_frames = int(container.streams.video[0].frames)
    except self._av.error.FFmpegError as e:
      raise bad.BadData("unreadable", f"{describe(value)}: {e}") from None
    if self.num_frames <= 0:                      # the container does not say: count
      self._cache = self._decode(None)
      self.num_frames = len(self._cache)
    if self.num_frames == 0:
      raise bad.BadData("empty", f"{describe(value)}: no frames")

  def _open(self):
    return self._av.open(io.BytesIO(self._data), mode="r")

  def _decode(self, last: int | None) -> list[np.ndarray]:
    out = []
    try:
      with self._open() as container:
        for frame in container.decode(video=0):
          out.append(frame.to_ndarray(format="rgb24"))
          if last is not None and len(out) > last:
            break
    except self._av.error.FFmpegError as e:
      if not out:
        raise bad.BadData("unreadable", f"{describe(self.value)}: {e}") from None
    return out

  def frames(self, indices) -> np.ndarray:
    """uint8 [len(indices), H, W, 3]; BadData "truncated" if the file ends before them."""
    indices = [int(i) for i in indices]
    decoded = self._cache if self._cache is not None else self._decode(max(indices))
    if max(indices) >= len(decoded):
      raise bad.BadData("truncated", f"{describe(self.value)}: {len(decoded)} frames decode "
                        f"of the {self.num_frames} the container lists")
    return np.stack([decoded[i] for i in indices])


def decode(value) -> Clip:
  return Clip(value)
