"""Sources over files the tests write: webdataset tars, ArrayRecord shards, tfds builds,
JSONL/CSV/Parquet manifests, mixtures; bad data skipped and counted; config validation."""

import json
import os

import numpy as np
import pytest

from data_fixtures import (caption_index, data_config, good_samples, image_bytes, records,
                           write_arrayrecord, write_tar, write_tfds)
from xmodal import config as config_lib
from xmodal.data import manifest, pipeline, sources


def test_expand_braces_and_globs(tmp_path):
  assert sources.expand_braces("a/{008..011}.tar") == [
      "a/008.tar", "a/009.tar", "a/010.tar", "a/011.tar"]
  assert sources.expand_braces("{x,y}-{1..2}") == ["x-1", "x-2", "y-1", "y-2"]
  for name in ("s-000.tar", "s-001.tar", "s-002.tar", "t.tar"):
    (tmp_path / name).write_bytes(b"")
  got = sources.expand_pattern(f"{tmp_path}/s-{{000..001}}.tar; {tmp_path}/t*.tar")
  assert [os.path.basename(p) for p in got] == ["s-000.tar", "s-001.tar", "t.tar"]
  assert len(sources.expand_pattern(f"{tmp_path}/s-*.tar")) == 3
  with pytest.raises(sources.SourceError, match="no file matches"):
    sources.expand_pattern(f"{tmp_path}/nothing-*.tar")
  with pytest.raises(sources.SourceError, match="do not exist"):
    sources.expand_pattern(f"{tmp_path}/s-{{000..005}}.tar")


def _webdataset(tmp_path):
  """3 shards: 2 clean (10 + 8 samples, with bad ones mixed in), 1 truncated."""
  s0 = good_samples(0, 10)
  s0[3]["txt"] = b"\xff\xfe not utf-8"                       # bad caption
  s0[6]["txt"] = b"   "                                      # empty caption
  s0[8]["jpg"] = b"definitely not a jpeg"                    # unreadable image
  s1 = good_samples(10, 8)
  s1.append({"key": "no_image", "txt": b"a caption without an image"})
  write_tar(str(tmp_path / "shard-000.tar"), s0)
  write_tar(str(tmp_path / "shard-001.tar"), s1)
  write_tar(str(tmp_path / "shard-002.tar"), good_samples(100, 6))
  data = (tmp_path / "shard-002.tar").read_bytes()
  (tmp_path / "shard-002.tar").write_bytes(data[: len(data) // 2 + 100])   # cut mid-member
  return f"{tmp_path}/shard-{{000..002}}.tar"


def test_webdataset_source_reads_members_and_survives_truncation(tmp_path):
  src = sources.WebDatasetSource(_webdataset(tmp_path))
  assert len(src.paths) == 3
  assert src.dropped_members > 0
  kept_from_truncated = len(src) - 19 - 1         # the last entry: the lost rest, counted
  assert 0 < kept_from_truncated < 6
  assert src[len(src) - 1]["_reason"] == "truncated"
  rec = src[0]
  assert rec["caption"] == b"caption number 0" and rec["label"] == 0
  assert rec["image"][:2] == b"\xff\xd8"                    # JPEG bytes, read by offset
  assert src[5]["image"][:4] == b"RIFF"                     # the .webp of sample 5
  assert "_bad" in src[18] and "no image" in src[18]["_bad"]
  for i in range(19, len(src) - 1):                         # what survived the cut is whole
    assert src[i]["caption"].decode().startswith("caption number 1")
    assert len(src[i]["image"]) > 100


def test_webdataset_pipeline_skips_and_counts_bad(tmp_path):
  pattern = _webdataset(tmp_path)
  config = data_config(source="webdataset", train_files=pattern, eval_files=pattern)
  config_lib.validate(config, 1)
  n = len(sources.WebDatasetSource(pattern))
  good = n - 5                          # 5 bad samples per epoch (one: the truncated tail)
  it = iter(pipeline.train_dataset(config))
  epochs, skipped = [], 0
  for _ in range(good):                                     # 8 * good = 8 epochs' worth
    batch = next(it)
    epochs += [int(e) for e in batch["epoch"]]
    skipped += int(batch["skipped"].sum())
    assert batch["image"].shape == (8, 16, 16, 3) and batch["image"].dtype == np.uint8
  # Each epoch yields exactly its good samples; the bad ones are counted, not returned
  # (those after the last good sample of epoch 7 are not read yet).
  assert np.bincount(epochs).tolist() == [good] * 8
  assert 5 * 7 <= skipped <= 5 * 8
  ev = pipeline.eval_arrays(config)
  assert ev["skipped"] == 5 and len(ev["caption"]) == n - 5


def test_arrayrecord_source_and_damaged_shards(tmp_path):
  write_arrayrecord(str(tmp_path / "a-00000.arrayrecord"), records(0, 7))
  bad = records(7, 3)
  bad[1] = b"\x00garbage that is not msgpack"
  write_arrayrecord(str(tmp_path / "a-00001.arrayrecord"), bad)
  write_arrayrecord(str(tmp_path / "a-00002.arrayrecord"), records(10, 5))
  data = (tmp_path / "a-00002.arrayrecord").read_bytes()
  (tmp_path / "a-00002.arrayrecord").write_bytes(data[: len(data) // 3])
  src = sources.ArrayRecordSource(f"{tmp_path}/a-*.arrayrecord")
  assert len(src) == 10 and len(src.skipped_shards) == 1
  rec = src[3]
  assert rec["caption"] == "record 3" and rec["label"] == 3 and rec["image"][:2] == b"\xff\xd8"
  assert "_bad" in src[8]
  config = data_config(source="arrayrecord", train_files=f"{tmp_path}/a-0000[01].arrayrecord",
                       eval_files=f"{tmp_path}/a-00000.arrayrecord")
  config_lib.validate(config, 1)
  batch = next(iter(pipeline.train_dataset(config)))
  assert batch["text"].shape == (8, 24)
  ev = pipeline.eval_arrays(config)
  assert sorted(caption_index(c) for c in ev["caption"]) == list(range(7))
  assert list(ev["label"]) == [caption_index(c) % 5 for c in ev["caption"]]


def test_record_format_roundtrip():
  data = sources.encode_record(b"IMG", ["one", "two"], label=4, key="k", meta={"w": 3})
  assert sources.decode_record(data) == {"image": b"IMG", "caption": ["one", "two"], "label": 4}
  with pytest.raises(ValueError):
    sources.decode_record(sources.msgpack.packb(["not", "a", "map"]))
  # Any fields, numpy arrays included (a record without an image is a bad row only for a
  # config whose towers read one: tests/test_data_fields.py).
  wave = np.linspace(-1, 1, 7, dtype=np.float32).reshape(7, 1)
  back = sources.decode_record(sources.encode_fields({"audio": wave, "caption": "x", "n": 3}))
  np.testing.assert_array_equal(back["audio"], wave)
  assert back["audio"].dtype == np.float32 and back["n"] == 3 and back["label"] == -1


def test_tfds_source_with_key_mapping(tmp_path):
  pytest.importorskip("tensorflow_datasets")
  data_dir = str(tmp_path / "tfds")
  name = write_tfds(data_dir, str(tmp_path))
  src = sources.TfdsSource(name, "train", data_dir,
                           "image=image,caption=captions/text,label=label")
  assert len(src) == 12
  rec = src[0]
  assert isinstance(rec["image"], bytes) and rec["image"][:2] == b"\xff\xd8"
  i = caption_index(rec["caption"][0])
  assert rec["caption"] == [f"row {i} first".encode(), f"row {i} second".encode()]
  assert rec["label"] == i % 3
  config = data_config(source="tfds", tfds_name=name, tfds_data_dir=data_dir,
                       tfds_keys="image=image,caption=captions/text,label=label",
                       captions="first")
  config_lib.validate(config, 1)
  batch = next(iter(pipeline.train_dataset(config)))
  assert batch["image"].shape == (8, 16, 16, 3)
  ev = pipeline.eval_arrays(config)
  assert len(ev["caption"]) == 4 and all(c.endswith("first") for c in ev["caption"])
  assert list(ev["label"]) == [caption_index(c) % 3 for c in ev["caption"]]
  with pytest.raises(config_lib.ConfigError, match="config.data.tfds_keys"):
    config_lib.validate(data_config(source="tfds", tfds_name=name, tfds_keys="picture=x"), 1)


def test_manifests_jsonl_csv_parquet(tmp_path):
  pa = pytest.importorskip("pyarrow")
  import pyarrow.parquet as pq
  (tmp_path / "img").mkdir()
  for i in range(6):
    (tmp_path / "img" / f"{i}.jpg").write_bytes(image_bytes(i))
  with open(tmp_path / "m.jsonl", "w") as f:
    for i in range(6):
      f.write(json.dumps({"image": f"img/{i}.jpg", "caption": [f"a {i}", f"b {i}"],
                          "label": i}) + "\n")
    f.write(json.dumps({"image": "img/missing.jpg", "caption": "gone"}) + "\n")
  (tmp_path / "m.csv").write_text("image,caption\nimg/0.jpg,csv zero\nimg/1.jpg,csv one\n")
  pq.write_table(pa.table({
      "image": [image_bytes(10 + i) for i in range(4)] + [b"broken"],
      "caption": [f"pq {i}" for i in range(5)], "label": list(range(5))}),
      str(tmp_path / "m.parquet"))
  jsonl = manifest.ManifestSource(str(tmp_path / "m.jsonl"))
  assert jsonl[2]["caption"] == ["a 2", "b 2"] and jsonl[2]["image"].endswith("img/2.jpg")
  both = manifest.ManifestSource(f"{tmp_path}/m.{{csv,parquet}}")
  assert len(both) == 7 and both[0]["caption"] == "csv zero"
  assert both[2]["image"][:2] == b"\xff\xd8" and both[2]["label"] == 0

  config = data_config(source="manifest", train_files=str(tmp_path / "m.jsonl"),
                       eval_files=str(tmp_path / "m.parquet"))
  config_lib.validate(config, 1)
  ev = pipeline.eval_arrays(config)
  assert ev["skipped"] == 1 and ev["caption"] == [f"pq {i}" for i in range(4)]
  batches = iter(pipeline.train_dataset(config))
  texts = []
  from xmodal.data import tokenizer
  tok = tokenizer.ByteTokenizer(24)
  for _ in range(6):
    texts += [tok.decode(t) for t in next(batches)["text"]]
  assert {t.split()[0] for t in texts} == {"a", "b"}        # one of the captions sampled
  # Old key names still work.
  legacy = data_config(source="manifest", train_manifest=str(tmp_path / "m.csv"),
                       eval_manifest=str(tmp_path / "m.csv"))
  config_lib.validate(legacy, 1)
  assert len(pipeline.make_source(legacy, "train")) == 2


def test_mixture_weights_and_epochs(tmp_path):
  write_tar(str(tmp_path / "w.tar"), good_samples(0, 12))
  write_arrayrecord(str(tmp_path / "r.arrayrecord"), records(0, 6))
  config = data_config(
      source="mixture", eval_source="arrayrecord", eval_files=str(tmp_path / "r.arrayrecord"),
      mixture=f"webdataset:{tmp_path}/w.tar@3; arrayrecord:{tmp_path}/r.arrayrecord@1")
  config_lib.validate(config, 1)
  it = iter(pipeline.train_dataset(config))
  src, epoch = [], []
  for _ in range(12):
    b = next(it)
    src += list(b["source"])
    epoch += list(zip(b["source"], b["epoch"]))
  src = np.array(src)
  assert abs(np.mean(src == 0) - 0.75) < 0.05
  # 72 from the 12-sample tar = 6 epochs; 24 from the 6-record shard = 4 epochs.
  assert max(e for s, e in epoch if s == 0) == 5
  assert max(e for s, e in epoch if s == 1) == 3
  ev = pipeline.eval_arrays(config)                       # eval_source + eval_files
  assert sorted(caption_index(c) for c in ev["caption"]) == list(range(6))


@pytest.mark.parametrize("field,change,match", [
    ("data.train_files", dict(source="webdataset", train_files="/nope/{0..3}.tar",
                              eval_files="/nope/x.tar"), "no file matches"),
    ("data.eval_files", dict(source="arrayrecord", train_files="HERE", eval_files=""),
     "required"),
    ("data.mixture", dict(source="mixture", mixture="parquet:/x@1"), "KIND"),
    ("data.mixture", dict(source="mixture", mixture="webdataset:/nope/*.tar@1",
                          eval_source="webdataset", eval_files="HERE"), "no file matches"),
    ("data.eval_source", dict(source="mixture", mixture="webdataset:HERE@1"), "required"),
    ("data.tfds_name", dict(source="tfds"), "required"),
    ("data.normalize", dict(normalize="clip"), "float32"),
    ("data.tokenizer_path", dict(tokenizer="sentencepiece"), "required"),
    ("data.tokenizer_path", dict(tokenizer="hf", tokenizer_path="/nope.json"), "no such file"),
    ("data.source", dict(source="tfrecord"), "not one of"),
])
def test_validate_names_the_bad_data_field(tmp_path, field, change, match):
  write_tar(str(tmp_path / "w.tar"), good_samples(0, 2))
  change = {k: v.replace("HERE", str(tmp_path / "w.tar")) if isinstance(v, str) else v
            for k, v in change.items()}
  with pytest.raises(config_lib.ConfigError, match=f"config.{field}: .*{match}"):
    config_lib.validate(data_config(**change), 1)
