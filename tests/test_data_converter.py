"""tools/convert_to_arrayrecord.py: folder / manifest / webdataset / tfds -> ArrayRecord shards,
parallel, resumable, bad rows skipped and summarised; the output trains through the
"arrayrecord" source."""

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow   # end-to-end / subprocess / torch parity
from data_fixtures import (caption_index, data_config, good_samples, image_bytes, write_tar,
                           write_tfds)
from xmodal import config as config_lib
from xmodal.data import pipeline, sources

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOL = os.path.join(ROOT, "tools", "convert_to_arrayrecord.py")


def _convert(*args) -> tuple[dict, str]:
  env = dict(os.environ, PYTHONPATH=ROOT)
  out = subprocess.run([sys.executable, TOOL, *args], capture_output=True, text=True,
                       env=env, timeout=120)
  assert out.returncode == 0, out.stderr[-3000:]
  output = args[args.index("--output") + 1]
  with open(f"{output}-summary.json") as f:
    return json.load(f), out.stdout


def _read_all(pattern):
  src = sources.ArrayRecordSource(pattern)
  return [src[i] for i in range(len(src))]


def test_folder_conversion_is_parallel_resumable_and_counts_skips(tmp_path):
  imgs = tmp_path / "imgs" / "sub"
  imgs.mkdir(parents=True)
  for i in range(11):
    (imgs / f"{i:03d}.jpg").write_bytes(image_bytes(i, size=(80, 60)))
    (imgs / f"{i:03d}.txt").write_text(f"caption number {i}\nsecond caption {i}\n")
  (imgs / "003.txt").unlink()                                   # no caption file
  (imgs / "004.txt").write_bytes(b"\xff\xfe\xfa")              # not UTF-8
  (imgs / "005.jpg").write_bytes(b"broken")                     # unreadable image
  (imgs / "006.txt").write_text("  \n")                         # empty caption
  out = str(tmp_path / "out" / "train")
  summary, stdout = _convert("--input", f"folder:{tmp_path / 'imgs'}", "--output", out,
                             "--records_per_shard", "4", "--processes", "2")
  assert summary["rows"] == 11 and summary["shards"] == 3 and summary["written"] == 7
  assert summary["skipped"] == {"no caption": 1, "caption not UTF-8": 1,
                                "unreadable image": 1, "empty caption": 1}
  assert "[3/3]" in stdout and "skipped" in stdout
  recs = _read_all(f"{out}-*-of-00003.arrayrecord")
  assert sorted(caption_index(r["caption"][0]) for r in recs) == [0, 1, 2, 7, 8, 9, 10]
  assert recs[0]["caption"] == ["caption number 0", "second caption 0"]

  # Resume: a finished shard is skipped; a missing one (a crash) is redone.
  victim = f"{out}-00001-of-00003.arrayrecord"
  os.remove(victim)
  os.remove(victim + ".json")
  before = os.path.getmtime(f"{out}-00000-of-00003.arrayrecord")
  summary2, stdout = _convert("--input", f"folder:{tmp_path / 'imgs'}", "--output", out,
                              "--records_per_shard", "4", "--processes", "2")
  assert "2 already done, 1 to write" in stdout
  assert os.path.exists(victim)
  assert os.path.getmtime(f"{out}-00000-of-00003.arrayrecord") == before
  assert summary2["written"] == 7 and summary2["skipped"] == summary["skipped"]


def test_manifest_and_webdataset_conversion_trains(tmp_path):
  (tmp_path / "img").mkdir()
  rows = []
  for i in range(6):
    (tmp_path / "img" / f"{i}.png").write_bytes(image_bytes(i, size=(900, 500), fmt="PNG"))
    rows.append({"image": f"img/{i}.png", "caption": f"record {i}", "label": i})
  rows.append({"image": "img/missing.png", "caption": "record 99"})
  lines = [json.dumps(r) for r in rows]
  lines.append('{"image": "img/0.png", "caption": "lone \\ud800 surrogate"}')
  lines.append('{"image": "img/0.png", "caption": "cut')                # broken JSON
  (tmp_path / "m.jsonl").write_text("\n".join(lines))
  out = str(tmp_path / "m_ar")
  summary, _ = _convert("--input", f"manifest:{tmp_path / 'm.jsonl'}", "--output", out,
                        "--processes", "1", "--max_image_size", "256")
  assert summary["written"] == 6 and summary["skipped"] == {
      "missing image file": 1, "caption not UTF-8": 1, "bad row": 1}
  from PIL import Image
  import io
  recs = _read_all(f"{out}-*.arrayrecord")
  assert [r["label"] for r in recs] == list(range(6))
  assert Image.open(io.BytesIO(recs[0]["image"])).size == (256, 142)   # re-encoded, smaller

  s0 = good_samples(0, 5)
  s0[2]["txt"] = b""
  write_tar(str(tmp_path / "w-0.tar"), s0)
  write_tar(str(tmp_path / "w-1.tar"), good_samples(5, 5))
  wout = str(tmp_path / "w_ar")
  summary, _ = _convert("--input", f"webdataset:{tmp_path}/w-{{0..1}}.tar", "--output", wout,
                        "--records_per_shard", "3", "--processes", "2")
  assert summary["written"] == 9 and summary["skipped"] == {"empty caption": 1}
  config = data_config(source="arrayrecord", train_files=f"{wout}-*.arrayrecord",
                       eval_files=f"{wout}-*.arrayrecord")
  config_lib.validate(config, 1)
  ev = pipeline.eval_arrays(config)
  assert sorted(caption_index(c) for c in ev["caption"]) == [0, 1, 3, 4, 5, 6, 7, 8, 9]
  assert list(ev["label"]) == [caption_index(c) % 7 for c in ev["caption"]]


def test_tfds_conversion(tmp_path):
  """A tfds ArrayRecord build -> xmodal records, read in a fresh process (no builder class
  registered there: tfds reads the build's own metadata)."""
  pytest.importorskip("tensorflow_datasets")
  data_dir = str(tmp_path / "tfds")
  name = write_tfds(data_dir, str(tmp_path), n_train=9, n_eval=3)
  out = str(tmp_path / "out" / "val")
  summary, stdout = _convert("--input", f"tfds:{name}:validation", "--tfds_data_dir",
                             data_dir, "--tfds_keys",
                             "image=image,caption=captions/text,label=label",
                             "--output", out, "--records_per_shard", "2", "--processes", "2")
  assert summary["rows"] == 3 and summary["shards"] == 2 and summary["written"] == 3
  recs = _read_all(f"{out}-*-of-00002.arrayrecord")
  assert sorted(caption_index(r["caption"][0]) for r in recs) == [1000, 1001, 1002]
  for r in recs:
    i = caption_index(r["caption"][0])
    assert r["caption"] == [f"row {i} first", f"row {i} second"] and r["label"] == i % 3
    assert r["image"] == image_bytes(i)                   # the stored JPEG, not re-encoded


def test_transparent_and_oversized_images(tmp_path):
  """Transparent PNGs stay transparent when kept (counted "with transparency"; training
  composites them) and are composited onto --background when re-encoded to JPEG, never
  black; an image over --max_image_pixels is skipped and counted from its header."""
  import io

  import numpy as np
  from PIL import Image
  imgs = tmp_path / "imgs"
  imgs.mkdir()
  for i in range(3):
    rgba = np.zeros((300, 400, 4), np.uint8)             # transparent black around
    rgba[100:200, 150:250] = (200, 0, 0, 255)            # an opaque red square
    Image.fromarray(rgba, "RGBA").save(imgs / f"{i}.png")
    (imgs / f"{i}.txt").write_text(f"caption number {i}")
  Image.new("RGB", (3000, 2500), (0, 0, 255)).save(imgs / "9.png")
  (imgs / "9.txt").write_text("caption number 9")
  kept, resized = str(tmp_path / "kept"), str(tmp_path / "resized")
  summary, stdout = _convert("--input", f"folder:{imgs}", "--output", kept,
                             "--processes", "1", "--max_image_pixels", "5000000")
  assert summary["written"] == 3 and summary["skipped"] == {"image over --max_image_pixels": 1}
  assert summary["images"] == {"with transparency": 3} and "with transparency" in stdout
  summary, _ = _convert("--input", f"folder:{imgs}", "--output", resized, "--processes", "1",
                        "--max_image_pixels", "5000000", "--max_image_size", "200",
                        "--background", "0,255,0")
  assert summary["written"] == 3 and summary["images"] == {"alpha composited": 3}
  for rec in _read_all(f"{resized}-*.arrayrecord"):
    pixels = np.asarray(Image.open(io.BytesIO(rec["image"])))
    assert pixels.shape == (150, 200, 3)
    assert np.abs(pixels[5, 5].astype(int) - (0, 255, 0)).max() <= 8      # JPEG error
    assert np.abs(pixels[75, 100].astype(int) - (200, 0, 0)).max() <= 8
  # Kept as PNG: the training pipeline composites onto data.alpha_background (white).
  config = data_config(source="arrayrecord", train_files=f"{kept}-*.arrayrecord",
                       eval_files=f"{kept}-*.arrayrecord")
  ev = pipeline.eval_arrays(config)
  assert len(ev["image"]) == 3 and (ev["image"][:, 0, 0] == 255).all()
