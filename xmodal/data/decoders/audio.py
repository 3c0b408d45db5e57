"""Audio files (WAV, FLAC, OGG/Vorbis, Opus, MP3) through libsndfile (`soundfile`):
bytes or a path -> Sampled(values float32 [N, C], rate). The audio tower kind resamples,
mixes to mono, crops or pads and computes the log-mel spectrogram."""

import io

import numpy as np

from xmodal.data import bad
from xmodal.data.decoders import Sampled, check_finite, describe, require

EXTENSIONS = ("wav", "flac", "ogg", "oga", "opus", "mp3")
EXTRA = "audio"


def sniff(data: bytes) -> bool:
  return (data[:4] in (b"RIFF", b"fLaC", b"OggS", b"ID3\x03", b"ID3\x04")
          or data[:2] in (b"\xff\xfb", b"\xff\xf3", b"\xff\xf2"))


def decode(value) -> Sampled:
  sf = require("soundfile", EXTRA, "audio")
  source = io.BytesIO(bytes(value)) if isinstance(value, (bytes, bytearray)) else value
  try:
    values, rate = sf.read(source, dtype="float32", always_2d=True)
  except sf.LibsndfileError as e:
    text = str(e).lower()
    reason = "truncated" if ("truncat" in text or "unexpected end" in text) else "unreadable"
    raise bad.BadData(reason, f"{describe(value)}: {e}") from None
  except OSError as e:             # a missing path
    raise bad.BadData("unreadable", f"{describe(value)}: {e}") from None
  if values.shape[0] == 0:
    raise bad.BadData("empty", f"{describe(value)}: no samples")
  return Sampled(check_finite(np.ascontiguousarray(values), value), float(rate))
