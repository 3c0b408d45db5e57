"""The embedded dataset, the tokenizer, manifests and the grain pipeline."""

import json

import numpy as np
import pytest
from PIL import Image

from xmodal.data import manifest, pipeline, shapes, tokenizer as tokenizer_lib
from tiny import make_tiny_config


def test_byte_tokenizer_round_trip_truncation_and_eos():
  tok = tokenizer_lib.ByteTokenizer(8)
  ids = tok.encode("héllo")
  assert ids.dtype == np.int32 and ids.shape == (8,)
  assert tok.decode(ids) == "héllo"
  assert list(ids[6:]) == [tokenizer_lib.EOS_ID, tokenizer_lib.PAD_ID]  # 6 UTF-8 bytes, EOS, pad
  long = tok.encode("abcdefghijk")
  assert long[-1] == tokenizer_lib.EOS_ID and tok.decode(long) == "abcdefg"
  assert tok.encode_batch(["a", "bb"]).shape == (2, 8)


def test_shapes_are_deterministic_and_eval_captions_distinct():
  source = shapes.ShapesSource("eval", shapes.NUM_COMBINATIONS, 16)
  a, b = source[7], source[7]
  np.testing.assert_array_equal(a["image"], b["image"])
  captions = [source[i]["caption"] for i in range(len(source))]
  assert len(set(captions)) == shapes.NUM_COMBINATIONS
  label = source[3]["label"]
  colour, shape = shapes.CLASSNAMES[label].split()
  assert f"{colour} {shape}" in source[3]["caption"]
  # Train and eval draw different images for the same index.
  assert not np.array_equal(shapes.ShapesSource("train", 10, 16)[0]["image"], source[0]["image"])


def test_shape_is_drawn_where_the_caption_says():
  source = shapes.ShapesSource("eval", shapes.NUM_COMBINATIONS, 48)
  for i in range(30):
    ex = source[i]
    colour = np.array(shapes.COLOURS[ex["caption"].split()[2]])
    mask = np.abs(ex["image"].astype(int) - colour).sum(axis=-1) < 80
    ys, xs = np.nonzero(mask)
    assert len(ys) > 10, ex["caption"]
    cy, cx = ys.mean() / 48, xs.mean() / 48
    if "top" in ex["caption"]:
      assert cy < 0.4, ex["caption"]
    if "bottom" in ex["caption"]:
      assert cy > 0.6, ex["caption"]
    if "left" in ex["caption"]:
      assert cx < 0.4, ex["caption"]
    if "right" in ex["caption"]:
      assert cx > 0.6, ex["caption"]


def test_pipeline_batches_are_deterministic_and_resume_exactly():
  config = make_tiny_config()
  ds = pipeline.train_dataset(config)
  it = iter(ds)
  first = next(it)
  assert first["image"].shape == (32, 16, 16, 3) and first["image"].dtype == np.uint8
  assert first["text"].shape == (32, config.data.context_length)
  state = it.get_state()
  expected = [next(it) for _ in range(3)]
  resumed = iter(pipeline.train_dataset(config))
  resumed.set_state(state)
  for want in expected:
    got = next(resumed)
    for key in ("image", "text", "label"):
      np.testing.assert_array_equal(got[key], want[key])
  # Same seed, fresh iterator: the same first batch.
  np.testing.assert_array_equal(next(iter(pipeline.train_dataset(config)))["image"],
                                first["image"])


def test_processes_read_disjoint_rows():
  config = make_tiny_config(**{"data.shapes_train_size": 64, "batch_size": 16})
  seen = []
  for p in range(2):
    it = iter(pipeline.train_dataset(config, process_index=p, process_count=2))
    batches = [next(it) for _ in range(4)]   # one epoch of this process's 32 rows
    seen.append({bytes(row) for b in batches for row in b["image"].reshape(8, -1)})
  assert len(seen[0]) == 32 and len(seen[1]) == 32
  assert not seen[0] & seen[1]


def _write_images(folder, n, corrupt=()):
  rows = []
  for i in range(n):
    path = folder / "imgs" / f"{i}.png"
    path.parent.mkdir(exist_ok=True)
    if i in corrupt:
      path.write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    else:
      shape = ["circle", "square"][i % 2]
      Image.fromarray(shapes.render(shape, "red", "large", 1, 1, 24,
                                    np.random.default_rng(i))).save(path)
    rows.append({"image": f"imgs/{i}.png", "caption": f"a red {['circle', 'square'][i % 2]}",
                 "label": i % 2})
  return rows


def test_manifest_jsonl_and_csv_resolve_relative_paths(tmp_path):
  rows = _write_images(tmp_path, 4)
  (tmp_path / "m.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
  (tmp_path / "m.csv").write_text("image,caption,label\n" + "\n".join(
      f"{r['image']},{r['caption']},{r['label']}" for r in rows))
  for name in ("m.jsonl", "m.csv"):
    source = manifest.ManifestSource(str(tmp_path / name))
    assert len(source) == 4
    assert source[1]["image"] == str(tmp_path / "imgs" / "1.png")
    assert source[1]["caption"] == "a red square" and source[1]["label"] == 1


def test_manifest_errors_name_file_and_line(tmp_path):
  # A broken line is a bad row naming file and line (skipped and counted: test_data_bad).
  (tmp_path / "bad.jsonl").write_text('{"image": "a.png", "caption": "x"}\n{not json\n')
  assert "bad.jsonl:2: not valid JSON" in manifest.ManifestSource(
      str(tmp_path / "bad.jsonl"))[1]["_bad"]
  (tmp_path / "cols.jsonl").write_text('{"img": "a.png", "caption": "x"}\n')
  with pytest.raises(manifest.ManifestError, match=r"cols.jsonl:1: row has no 'image' column"):
    manifest.ManifestSource(str(tmp_path / "cols.jsonl"))


def test_corrupt_images_and_empty_captions_are_skipped_and_counted(tmp_path):
  rows = _write_images(tmp_path, 12, corrupt={2, 7})
  rows[5]["caption"] = "   "
  rows[9]["image"] = "imgs/missing.png"
  (tmp_path / "train.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
  config = make_tiny_config(**{"data.source": "manifest", "batch_size": 8,
                               "data.train_manifest": str(tmp_path / "train.jsonl"),
                               "data.eval_manifest": str(tmp_path / "train.jsonl")})
  it = iter(pipeline.train_dataset(config))
  batches = [next(it) for _ in range(3)]   # 24 good rows = 3 epochs of 8 good rows
  assert sum(int(b["skipped"].sum()) for b in batches) == 12   # 4 bad rows x 3 epochs
  evaluation = pipeline.eval_arrays(config)
  assert evaluation["skipped"] == 4 and len(evaluation["image"]) == 8
