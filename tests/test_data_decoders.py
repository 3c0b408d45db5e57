"""Decoders (xmodal/data/decoders) and the tower kinds' preparation, on small files each
test writes with the real library (soundfile, PyAV, nibabel, pydicom, wfdb), bad cases
included: every bad file is a BadData with its reason, never another exception."""

import gzip
import io
import os

import numpy as np
import pytest

from xmodal.data import audio as audio_lib, bad, decoders
from xmodal.towers import audio as audio_kind, signal as signal_kind, vector as vector_kind
from xmodal.towers import video as video_kind, volume as volume_kind


def _auto(value, hint=""):
  return decoders.decode(value, "auto", hint)


def _reason(fn, *args):
  with pytest.raises(bad.BadData) as e:
    fn(*args)
  return e.value.reason


def test_choose_by_hint_extension_and_content(tmp_path):
  assert decoders.extension("a/b.NII.GZ") == "nii.gz" and decoders.extension("x.0.jpg") == "jpg"
  assert decoders.choose(b"RIFF....WAVEfmt ", "") == "audio"
  assert decoders.choose(b"xx", "wav") == "audio"
  assert decoders.choose("/d/scan.nii.gz") == "nifti"
  assert decoders.choose(np.zeros(3)) == "array" and decoders.choose([1.0, 2.0]) == "array"
  assert decoders.choose([b"\xff\xd8", b"\xff\xd8"]) == "frames"
  assert decoders.choose(["f/0.jpg", "f/1.jpg"]) == "frames"
  assert decoders.choose(["s/0.dcm", "s/1.dcm"]) == "dicom"
  assert decoders.choose([b"\0" * 128 + b"DICM"]) == "dicom"
  buf = io.BytesIO()
  np.save(buf, np.zeros(2))
  assert decoders.choose(buf.getvalue()) == "array"
  assert _reason(decoders.choose, b"nothing known", "") == "unsupported"
  assert _reason(_auto, b"") == "empty"


# ----------------------------------------------------------------------------- audio

def _wav(values, rate, subtype="PCM_16", fmt="WAV") -> bytes:
  import soundfile as sf
  buf = io.BytesIO()
  sf.write(buf, values, rate, subtype=subtype, format=fmt)
  return buf.getvalue()


AUDIO = audio_kind.Prepare(sample_rate=16000, n_fft=400, hop=160, n_mels=32, frames=48)


def test_audio_resampled_log_mel_matches_a_native_recording():
  """A 1 kHz tone recorded at 22,050 Hz in stereo, decoded (soundfile), mixed to mono,
  resampled (soxr) and turned into log-mel, equals the same tone generated at 16 kHz."""
  n = audio_lib.num_samples(48)
  t22 = np.arange(int(n * 22050 / 16000) + 64) / 22050
  tone = 0.5 * np.sin(2 * np.pi * 1000 * t22)
  decoded = decoders.decode(_wav(np.stack([tone, tone], 1), 22050), "auto", "wav")
  assert decoded.rate == 22050 and decoded.values.shape == (len(tone), 2)
  got = AUDIO(decoded, False, np.random.default_rng(0))
  # Reference: the same window of the tone at 16 kHz (the eval crop is centred).
  t16 = np.arange(int(len(tone) * 16000 / 22050)) / 16000
  start = (len(t16) - n) // 2
  want = audio_lib.log_mel_spectrogram(0.5 * np.sin(2 * np.pi * 1000 * t16[start:start + n]),
                                       16000, 400, 160, 32, 48)
  assert got.shape == (48, 32) and got.dtype == np.float32
  strong = want > want.max() - 6                          # bands within e^6 of the peak
  assert np.abs(got - want)[strong].max() < 0.05
  assert np.argmax(got.mean(0)) == np.argmax(want.mean(0))


def test_audio_crop_and_pad():
  n = audio_lib.num_samples(48)
  wave = np.random.default_rng(0).normal(0, 0.1, 3 * n).astype(np.float32)
  a = AUDIO(decoders.Sampled(wave[:, None], 16000), True, np.random.default_rng(1))
  b = AUDIO(decoders.Sampled(wave[:, None], 16000), True, np.random.default_rng(2))
  assert not np.array_equal(a, b)                        # random windows when training
  short = AUDIO(wave[: n // 2], False, None)             # a bare array: at the tower's rate
  assert np.allclose(short[-5:], np.log(1e-6))           # padded with silence


def test_audio_bad_files_are_bad_data_with_reasons(tmp_path):
  good = _wav(np.zeros(1000), 16000, fmt="FLAC", subtype="PCM_16")
  assert _reason(_auto, b"RIFF garbage that is not a wav", "wav") == "unreadable"
  assert _reason(_auto, _wav(np.zeros((0, 1)), 16000), "wav") == "empty"
  nan = np.zeros(100, np.float32)
  nan[5] = np.nan
  assert _reason(_auto, _wav(nan, 16000, subtype="FLOAT"), "wav") == "nonfinite"
  assert _reason(_auto, good[: len(good) // 3], "flac") in ("truncated", "unreadable")
  assert _reason(_auto, str(tmp_path / "missing.wav")) == "unreadable"
  strict = audio_kind.Prepare(16000, 400, 160, 32, 48, resample=False)
  assert _reason(strict, decoders.decode(_wav(np.zeros(800), 8000), "auto", "wav"), False,
                 None) == "wrong_sample_rate"
  assert _reason(AUDIO, np.zeros((2, 3, 4)), False, None) == "wrong_shape"


# ----------------------------------------------------------------------------- video

COLOURS = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0], [0, 255, 255],
                    [255, 0, 255], [255, 255, 255], [0, 0, 0], [128, 128, 0], [0, 128, 128],
                    [128, 0, 128], [64, 200, 64]], np.uint8)


def mp4_bytes(colours=COLOURS, size=32) -> bytes:
  """A clip of one flat colour per frame, encoded by PyAV (MPEG-4 part 2)."""
  import av
  buf = io.BytesIO()
  with av.open(buf, mode="w", format="mp4") as container:
    stream = container.add_stream("mpeg4", rate=12)
    stream.width = stream.height = size
    stream.pix_fmt = "yuv420p"
    stream.options = {"qscale": "2"}
    for c in colours:
      frame = av.VideoFrame.from_ndarray(np.tile(c, (size, size, 1)), format="rgb24")
      container.mux(stream.encode(frame))
    container.mux(stream.encode())
  return buf.getvalue()


def test_video_decodes_and_samples_frames_uniformly():
  data = mp4_bytes()
  clip = decoders.decode(data, "auto", "mp4")
  assert clip.num_frames == 12
  prep = video_kind.Prepare(frames=4, size=16)
  x = prep(clip, False, None)
  assert x.shape == (4, 16, 16, 3) and x.dtype == np.uint8
  # Eval: the centre of each of 4 segments of 12 frames: frames 1, 4, 7, 10.
  got = x.reshape(4, -1, 3).mean(1)
  assert np.abs(got - COLOURS[[1, 4, 7, 10]]).max() < 12, got
  train = prep(clip, True, np.random.default_rng(0)).reshape(4, -1, 3).mean(1)
  picked = [int(np.argmin(np.abs(COLOURS - f).sum(1))) for f in train]
  assert all(3 * i <= p < 3 * i + 3 for i, p in enumerate(picked)), picked
  assert list(video_kind.sample_indices(2, 4, False, None)) == [0, 0, 1, 1]   # short clips


def test_video_frames_as_images_and_arrays():
  from PIL import Image
  frames = []
  for c in COLOURS[:6]:
    buf = io.BytesIO()
    Image.fromarray(np.tile(c, (20, 30, 1))).save(buf, "PNG")
    frames.append(buf.getvalue())
  prep = video_kind.Prepare(frames=3, size=8)
  x = prep(decoders.decode(frames), False, None)
  np.testing.assert_array_equal(x[:, 4, 4], COLOURS[[1, 3, 5]])
  y = prep(np.stack([np.tile(c, (8, 8, 1)) for c in COLOURS[:6]]), False, None)
  np.testing.assert_array_equal(y, x)


def test_video_bad_files():
  data = mp4_bytes()
  assert _reason(_auto, b"\x00\x00\x00\x18ftypmp42 broken", "mp4") == "unreadable"
  cut = data[: len(data) // 2]
  with pytest.raises(bad.BadData) as e:
    video_kind.Prepare(frames=4, size=16)(decoders.decode(cut, "auto", "mp4"), False, None)
  assert e.value.reason in ("truncated", "unreadable")
  assert _reason(video_kind.Prepare(4, 8), np.zeros((3, 8, 8)), False, None) == "wrong_shape"


# ----------------------------------------------------------------------------- arrays

def _npy(x) -> bytes:
  buf = io.BytesIO()
  np.save(buf, x)
  return buf.getvalue()


def test_arrays_and_vectors(tmp_path):
  x = np.arange(20, dtype=np.float32)
  np.testing.assert_array_equal(decoders.decode(_npy(x), "auto", "npy"), x)
  np.savez(tmp_path / "v.npz", genes=x)
  np.testing.assert_array_equal(decoders.decode(str(tmp_path / "v.npz")), x)
  np.testing.assert_array_equal(decoders.decode(list(range(20))), x)
  prep = vector_kind.Prepare(20, "log1p")
  np.testing.assert_allclose(prep(x, True, None), np.log1p(x))
  assert _reason(prep, x[:19], True, None) == "wrong_shape"
  assert _reason(_auto, _npy(x)[:-10], "npy") in ("truncated", "unreadable")
  nan = x.copy()
  nan[3] = np.inf
  assert _reason(_auto, _npy(nan), "npy") == "nonfinite"
  assert _reason(_auto, _npy(np.array(["a", "b"])), "npy") == "unsupported"
  assert _reason(decoders.decode, ["a", "b"], "array") == "wrong_shape"
  np.savez(tmp_path / "two.npz", a=x, b=x)
  assert _reason(_auto, str(tmp_path / "two.npz")) == "wrong_shape"


# ----------------------------------------------------------------------------- volumes

def test_nifti_volume_slices_first(tmp_path):
  import nibabel as nib
  vol = np.random.default_rng(0).normal(size=(10, 12, 6)).astype(np.float32)   # x, y, z
  nib.save(nib.Nifti1Image(vol, np.eye(4)), tmp_path / "a.nii.gz")
  got = decoders.decode(str(tmp_path / "a.nii.gz"))
  np.testing.assert_allclose(got, vol.transpose(2, 1, 0), rtol=1e-6)
  data = (tmp_path / "a.nii.gz").read_bytes()
  np.testing.assert_allclose(decoders.decode(data, "auto", "nii.gz"), got)   # bytes (a shard)
  raw = gzip.decompress(data)
  assert _reason(_auto, raw[: len(raw) // 2], "nii") == "truncated"
  assert _reason(_auto, data[: len(data) // 2], "nii.gz") == "truncated"
  nib.save(nib.Nifti1Image(np.zeros((4, 4), np.float32), np.eye(4)), tmp_path / "flat.nii")
  assert _reason(_auto, str(tmp_path / "flat.nii")) == "wrong_shape"
  vol[1, 2, 3] = np.nan
  nib.save(nib.Nifti1Image(vol, np.eye(4)), tmp_path / "nan.nii")
  assert _reason(_auto, str(tmp_path / "nan.nii")) == "nonfinite"


def _dicom_slice(path, pixels, z, slope=2.0, intercept=-1024.0, instance=1):
  import pydicom
  from pydicom.dataset import FileMetaDataset
  from pydicom.uid import ExplicitVRLittleEndian, generate_uid
  meta = FileMetaDataset()
  meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"      # CT image storage
  meta.MediaStorageSOPInstanceUID = generate_uid()
  meta.TransferSyntaxUID = ExplicitVRLittleEndian
  ds = pydicom.Dataset()
  ds.file_meta = meta
  ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
  ds.Modality, ds.InstanceNumber = "CT", instance
  ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
  ds.ImagePositionPatient = [0, 0, z]
  ds.Rows, ds.Columns = pixels.shape
  ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
  ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
  ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
  ds.PixelData = pixels.astype(np.uint16).tobytes()
  ds.save_as(path, enforce_file_format=True)


def test_dicom_series_sorted_by_position_and_rescaled(tmp_path):
  rng = np.random.default_rng(0)
  slices = rng.integers(0, 2000, (5, 8, 6))
  order = [3, 0, 4, 1, 2]                       # file names do not follow the scan axis
  series = tmp_path / "series"
  series.mkdir()
  for name, k in enumerate(order):
    _dicom_slice(series / f"{name}.dcm", slices[k], z=2.5 * k, instance=name + 1)
  got = decoders.decode(str(series))
  np.testing.assert_array_equal(got, slices * 2.0 - 1024.0)
  as_bytes = [(series / f"{n}.dcm").read_bytes() for n in range(5)]
  np.testing.assert_array_equal(decoders.decode(as_bytes, "dicom"), got)
  broken = as_bytes[0][: len(as_bytes[0]) - 40]
  assert _reason(decoders.decode, [broken] + as_bytes[1:], "dicom") in ("truncated", "unreadable")
  assert _reason(decoders.decode, [b"not dicom at all" * 20], "dicom") == "unreadable"


def test_volume_resample_matches_scipy_zoom():
  """The volume kind's separable linear resampling equals scipy.ndimage.zoom (order 1,
  grid_mode, nearest edges); the prepared volume is standardised."""
  from scipy import ndimage
  vol = np.random.default_rng(0).normal(size=(7, 20, 13)).astype(np.float32)
  shape = (4, 16, 16)
  want = ndimage.zoom(vol, [o / i for o, i in zip(shape, vol.shape)], order=1, grid_mode=True,
                      mode="nearest")
  np.testing.assert_allclose(volume_kind.resample(vol, shape), want, atol=1e-5)
  x = volume_kind.Prepare(4, 16)(vol, False, None)
  assert x.shape == shape and abs(x.mean()) < 1e-5 and abs(x.std() - 1) < 1e-4
  assert _reason(volume_kind.Prepare(4, 16), np.zeros((4, 4)), False, None) == "wrong_shape"


# ----------------------------------------------------------------------------- signals

def test_wfdb_ecg_record(tmp_path):
  import wfdb
  t = np.arange(1000) / 250
  sig = np.stack([np.sin(2 * np.pi * f * t) for f in (1, 3, 7)], 1)
  wfdb.wrsamp("ecg", fs=250, units=["mV"] * 3, sig_name=["I", "II", "V1"], p_signal=sig,
              fmt=["16"] * 3, write_dir=str(tmp_path))
  got = decoders.decode(str(tmp_path / "ecg.hea"))
  assert got.rate == 250 and got.values.shape == (1000, 3)
  assert np.abs(got.values - sig).max() < 1e-3            # 16-bit quantisation
  prep = signal_kind.Prepare(length=256, channels=3, sample_rate=125)
  x = prep(got, False, None)                              # resampled to 125 Hz: 500 steps
  assert x.shape == (256, 3) and np.allclose(x.std(0), 1, atol=1e-3)
  assert _reason(signal_kind.Prepare(256, 2), got, False, None) == "wrong_shape"
  dat = tmp_path / "ecg.dat"
  dat.write_bytes(dat.read_bytes()[:1001])
  assert _reason(_auto, str(tmp_path / "ecg.hea")) in ("truncated", "unreadable")
  os.remove(dat)
  assert _reason(_auto, str(tmp_path / "ecg.hea")) == "unreadable"
  assert _reason(_auto, str(tmp_path / "nothing.hea")) == "unreadable"


def test_missing_extra_names_the_extra(monkeypatch):
  import sys
  monkeypatch.setitem(sys.modules, "soundfile", None)      # as if not installed
  with pytest.raises(decoders.MissingExtra, match=r"pip install 'xmodal\[audio\]'"):
    decoders.decode(b"RIFF0000WAVE", "audio")
