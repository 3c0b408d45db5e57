"""Bad rows of every kind are skipped and counted by reason, never fatal (xmodal/data/bad.py
and the sources and decoders that produce them)."""

import io
import json
import logging

import cv2
import numpy as np
import pytest
from PIL import Image

from xmodal.data import bad, manifest, pipeline, sources, transforms
from data_fixtures import data_config, good_samples, image_bytes, write_tar


def _counts(batches) -> dict:
  total = sum(b[pipeline.SKIPPED_REASONS_KEY].sum(0) for b in batches)
  assert total.sum() == sum(int(b["skipped"].sum()) for b in batches)
  return bad.named(total)


def test_manifest_non_utf8_surrogates_and_broken_json_are_skipped_by_reason(tmp_path, caplog):
  """Raw 0xff bytes in a caption, a lone surrogate escape, a line of broken JSON and a
  non-integer label: each row is skipped and counted under its reason, and the log names
  the file and line. (On main the 0xff byte stopped the source with "'utf-8' codec can't
  decode byte 0xff", the broken line with an error.)"""
  for i in range(6):
    (tmp_path / f"{i}.png").write_bytes(image_bytes(i, fmt="PNG"))
  lines = [json.dumps({"image": f"{i}.png", "caption": f"picture {i}"}).encode()
           for i in range(6)]
  lines[1] = b'{"image": "1.png", "caption": "caf\xff au lait"}'         # raw non-UTF-8
  lines[2] = b'{"image": "2.png", "caption": "lone \\ud800 surrogate"}'  # parses to a str
  lines[3] = b'{"image": "3.png", "caption": "cut'                       # broken JSON
  lines[4] = b'{"image": "4.png", "caption": "x", "label": "four"}'      # bad label
  path = tmp_path / "m.jsonl"
  path.write_bytes(b"\n".join(lines) + b"\n")
  src = manifest.ManifestSource(str(path))
  assert len(src) == 6
  assert bad.reason_of(src[1]) == "not_utf8" and f"{path}:2" in src[1]["_bad"]
  assert bad.reason_of(src[3]) == "bad_row" and f"{path}:4: not valid JSON" in src[3]["_bad"]
  assert bad.reason_of(src[4]) == "bad_row" and f"{path}:5" in src[4]["_bad"]

  config = data_config(source="manifest", train_files=str(path), eval_files=str(path))
  config.batch_size = 4
  with caplog.at_level(logging.WARNING):
    it = iter(pipeline.train_dataset(config))
    batches = [next(it) for _ in range(4)]          # 16 good rows = 8 epochs of 2
  counts = _counts(batches)
  assert set(counts) == {"data/skipped/not_utf8", "data/skipped/bad_row"}
  assert 2 * 7 <= counts["data/skipped/not_utf8"] <= 2 * 8
  assert 2 * 7 <= counts["data/skipped/bad_row"] <= 2 * 8
  assert f"{path}:4: not valid JSON" in caplog.text
  assert "lone surrogate" in caplog.text
  ev = pipeline.eval_arrays(config)
  assert ev["skipped"] == 4 and ev["caption"] == ["picture 0", "picture 5"]
  assert ev["skipped_reasons"] == {"data/skipped/not_utf8": 2, "data/skipped/bad_row": 2}


def test_csv_manifest_with_non_utf8_bytes_skips_the_row(tmp_path):
  (tmp_path / "a.png").write_bytes(image_bytes(0, fmt="PNG"))
  (tmp_path / "m.csv").write_bytes(b"image,caption\na.png,fine\na.png,caf\xe9\na.png,ok\n")
  src = manifest.ManifestSource(str(tmp_path / "m.csv"))
  assert src[0]["caption"] == "fine" and src[2]["caption"] == "ok"
  assert bad.reason_of(src[1]) == "not_utf8" and "m.csv:3" in src[1]["_bad"]


def _png16(values: np.ndarray) -> bytes:
  ok, buf = cv2.imencode(".png", values)
  assert ok
  return buf.tobytes()


def test_16_bit_png_maps_to_8_bits_instead_of_white():
  """A 16-bit grey PNG (a gradient over the full 0..65535 range) decodes to the 8-bit
  gradient x / 257 in the train crop, the eval crop and `decode`; PIL's own convert clips
  it at 255 (pure white). A 16-bit RGB PNG keeps its channels."""
  grey = np.tile(np.linspace(0, 65535, 64).astype(np.uint16), (64, 1))
  data = _png16(grey)
  assert Image.open(io.BytesIO(data)).mode == "I;16"
  want = np.round(grey / 257).astype(np.uint8)
  full = np.asarray(transforms.decode(data))
  np.testing.assert_array_equal(full[..., 0], want)
  assert (full[..., 0] == full[..., 2]).all()
  ev = transforms.decode_center_crop(data, 64)
  assert np.abs(ev[..., 1].astype(int) - want).max() <= 2
  crop = transforms.decode_random_crop(data, 32, np.random.default_rng(0), (1.0, 1.0), (1, 1))
  assert 100 < crop.mean() < 155 and crop.min() < 10 and crop.max() > 245   # not white
  rgb = np.stack([grey, grey // 2, np.full_like(grey, 65535)], -1)  # cv2: BGR order
  pixels = np.asarray(transforms.decode(_png16(rgb)))
  assert pixels[..., 0].max() == 255 and abs(int(pixels[..., 1].max()) - 128) <= 1
  assert np.abs(pixels[..., 2].astype(int) - want).max() <= 1    # PIL keeps the high byte


def test_float_image_is_skipped_as_unsupported():
  buf = io.BytesIO()
  Image.fromarray(np.linspace(0, 1, 256, dtype=np.float32).reshape(16, 16)).save(buf, "TIFF")
  with pytest.raises(bad.BadData, match="no faithful 8-bit mapping") as e:
    transforms.decode_center_crop(buf.getvalue(), 16)
  assert e.value.reason == "unsupported"


def test_truncated_webdataset_shard_counts_its_lost_samples(tmp_path):
  """A shard cut in the middle of a member: the sample it belonged to reads as a bad
  "truncated" record, so every epoch counts it (on main data/skipped stayed 0)."""
  write_tar(str(tmp_path / "s-0.tar"), good_samples(0, 8))
  data = (tmp_path / "s-0.tar").read_bytes()
  (tmp_path / "s-0.tar").write_bytes(data[: len(data) // 2 + 100])
  src = sources.WebDatasetSource(str(tmp_path / "s-0.tar"))
  reasons = [bad.reason_of(src[i]) if "_bad" in src[i] else None for i in range(len(src))]
  assert reasons.count("truncated") == 1 and reasons[-1] == "truncated"
  assert "truncated shard" in src[len(src) - 1]["_bad"]
  good = reasons.count(None)
  config = data_config(source="webdataset", train_files=str(tmp_path / "s-0.tar"),
                       eval_files=str(tmp_path / "s-0.tar"))
  config.batch_size = good
  it = iter(pipeline.train_dataset(config))
  counts = _counts([next(it) for _ in range(4)])
  assert 3 <= counts["data/skipped/truncated"] <= 4


def test_bad_records_name_a_known_reason():
  with pytest.raises(ValueError, match="unknown skip reason"):
    bad.bad("weird", "x")
  assert bad.counts(["empty", "empty", "nonfinite"]).tolist()[bad.REASONS.index("empty")] == 2
