"""Decoders: a record field's raw value (file bytes, a path, a list, an array) -> a decoded
value a tower kind prepares (xmodal/towers). One module per decoder, found by name; each
exports

  EXTENSIONS   file extensions it reads ("wav", "nii.gz", ...), lower case
  EXTRA        the pip extra that installs its library ("" = none needed)
  decode(value) -> decoded value (np.ndarray, `Sampled`, a clip reader, ...); raises
               bad.BadData for data it cannot use
  sniff(data: bytes) -> bool   (optional) recognises its format from the first bytes

Libraries are imported only when a decoder runs (`require`), so a config that uses none
needs none of them installed; a missing one stops the run with the extra to install.
`decode(value, "auto", hint)` picks the decoder from the hint (a webdataset member
extension or a file name), the value's own extension if it is a path, or its first bytes.
"""

import dataclasses
import functools
import importlib
import os
import pkgutil

import numpy as np

from xmodal.data import bad


class MissingExtra(ImportError):
  """A decoder's library is not installed; the message names the pip extra."""


@dataclasses.dataclass
class Sampled:
  """A sampled signal: values float32 [N, C] (N samples of C channels) at `rate` Hz."""
  values: np.ndarray
  rate: float


def require(module: str, extra: str, decoder: str):
  """Imports `module` or raises MissingExtra naming the extra that installs it."""
  try:
    return importlib.import_module(module)
  except ImportError:
    raise MissingExtra(f"the {decoder!r} decoder needs the {module!r} package: "
                       f"pip install 'xmodal[{extra}]'") from None


@functools.cache
def names() -> tuple[str, ...]:
  return tuple(sorted(m.name for m in pkgutil.iter_modules(__path__)
                      if not m.name.startswith("_")))


@functools.cache
def get(name: str):
  if name not in names():
    raise ValueError(f"unknown decoder {name!r}; known: {', '.join(names())}")
  return importlib.import_module(f"{__name__}.{name}")


@functools.cache
def _by_extension() -> dict:
  out = {}
  for name in names():
    for ext in get(name).EXTENSIONS:
      out.setdefault(ext, name)
  return out


def extension(name: str) -> str:
  """'a/b.nii.gz' -> 'nii.gz', 'x.WAV' -> 'wav', '000.0.jpg' -> 'jpg' (the longest known
  suffix, else the last one)."""
  base = os.path.basename(str(name)).lower()
  parts = base.split(".")
  for i in range(len(parts)):
    ext = ".".join(parts[i:])
    if ext in _by_extension():
      return ext
  return parts[-1] if len(parts) > 1 else base


def choose(value, hint: str = "") -> str:
  """The decoder for a raw value: by hint or path extension, else by content."""
  if isinstance(value, np.ndarray) or (isinstance(value, (list, tuple)) and value and
                                       not isinstance(value[0], (bytes, str))):
    return "array"
  if isinstance(value, (list, tuple)):           # several files: DICOM slices or frames
    first = value[0]
    if isinstance(first, (bytes, bytearray)):
      return "dicom" if get("dicom").sniff(bytes(first[:132])) else "frames"
    return "frames" if extension(first) in ("jpg", "jpeg", "png", "webp") else "dicom"
  for name in (hint, value if isinstance(value, str) else ""):
    if name:
      ext = extension(name)
      if ext in _by_extension():
        return _by_extension()[ext]
  if isinstance(value, str) and os.path.isdir(value):
    return "dicom"                         # a folder: a DICOM series
  if isinstance(value, (bytes, bytearray)):
    for name in names():
      sniff = getattr(get(name), "sniff", None)
      if sniff is not None and sniff(bytes(value[:512])):
        return name
  raise bad.BadData("unsupported", f"no decoder for {describe(value)} (hint {hint!r}); set "
                    f"the tower's decoder to one of {', '.join(names())}")


def decode(value, name: str = "auto", hint: str = ""):
  """Raw value -> decoded value, with decoder `name` ("auto": `choose`)."""
  if value is None or (isinstance(value, (bytes, str, list, tuple)) and len(value) == 0):
    raise bad.BadData("empty", f"empty value{f' ({hint})' if hint else ''}")
  return get(choose(value, hint) if name == "auto" else name).decode(value)


def describe(value) -> str:
  """A short description of a raw value for messages: its path, or its type and size."""
  if isinstance(value, str):
    return value
  if isinstance(value, (bytes, bytearray)):
    return f"{len(value)} bytes"
  if isinstance(value, np.ndarray):
    return f"array {value.shape} {value.dtype}"
  return type(value).__name__


def read_bytes(value) -> bytes:
  """A path or bytes -> bytes (BadData "unreadable" for a missing file)."""
  if isinstance(value, (bytes, bytearray)):
    return bytes(value)
  try:
    with open(value, "rb") as f:
      return f.read()
  except OSError as e:
    raise bad.BadData("unreadable", f"{value}: {e.strerror}") from None


def check_finite(x: np.ndarray, what) -> np.ndarray:
  if x.size and not np.isfinite(x).all():
    raise bad.BadData("nonfinite", f"{describe(what)}: {int((~np.isfinite(x)).sum())} NaN/inf "
                      f"values")
  return x
