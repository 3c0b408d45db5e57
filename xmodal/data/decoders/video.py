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
  not say, from one decoding pass that converts nothing); `frames(indices)` decodes up to
  the last index asked for and converts only the frames asked for to RGB."""

  def __init__(self, value):
    self._av = require("av", EXTRA, "video")
    self.value, self._data = value, read_bytes(value)
    try:
      with self._open() as container:
        if not container.streams.video:
          raise bad.BadData("unreadable", f"{describe(value)}: no video stream (a truncated "
                            f"file or audio only)")
        self.num_frames = int(container.streams.video[0].frames)
    except self._av.error.FFmpegError as e:
      raise bad.BadData("unreadable", f"{describe(value)}: {e}") from None
    if self.num_frames <= 0:                      # the container does not say: count
      self.num_frames = len(self._decode(()))
    if self.num_frames == 0:
      raise bad.BadData("empty", f"{describe(value)}: no frames")

  def _open(self):
    return self._av.open(io.BytesIO(self._data), mode="r")

  def _decode(self, wanted, last: int | None = None) -> dict:
    """{index: uint8 [H, W, 3]} for the frame indices in `wanted`, decoding until `last`
    (or the end); with nothing wanted, range(number of frames decoded)."""
    out, count = {}, 0
    try:
      with self._open() as container:
        for frame in container.decode(video=0):
          if count in wanted:
            out[count] = frame.to_ndarray(format="rgb24")
          count += 1
          if last is not None and count > last:
            break
    except self._av.error.FFmpegError as e:
      if not count:
        raise bad.BadData("unreadable", f"{describe(self.value)}: {e}") from None
    self._count = count
    return out if wanted else range(count)

  def frames(self, indices) -> np.ndarray:
    """uint8 [len(indices), H, W, 3]; BadData "truncated" if the file ends before them."""
    indices = [int(i) for i in indices]
    decoded = self._decode(set(indices), max(indices))
    missing = [i for i in indices if i not in decoded]
    if missing:
      raise bad.BadData("truncated", f"{describe(self.value)}: {self._count} frames decode "
                        f"of the {self.num_frames} the container lists")
    return np.stack([decoded[i] for i in indices])


def decode(value) -> Clip:
  return Clip(value)
