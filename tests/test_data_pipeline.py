"""Order, sharding and resume of the training pipeline: disjoint per-process reads, a fresh
global shuffle each epoch, determinism, exact resume from `get_state()` (also with worker
processes and mid-way through a multi-caption example), loud failure on all-bad data."""

import json

import numpy as np
import pytest

from data_fixtures import caption_index, data_config, records, write_arrayrecord
from xmodal.data import pipeline, sources, tokenizer


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
  folder = tmp_path_factory.mktemp("ar")
  write_arrayrecord(str(folder / "s-00000.arrayrecord"), records(0, 20))
  write_arrayrecord(str(folder / "s-00001.arrayrecord"), records(20, 20))
  return f"{folder}/s-{{00000..00001}}.arrayrecord"


def _ids(batch) -> list[int]:
  tok = tokenizer.ByteTokenizer(24)
  return [caption_index(tok.decode(t)) for t in batch["text"]]


def _take(it, n):
  return [next(it) for _ in range(n)]


def _same(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert sorted(x) == sorted(y)
    for k in x:
      np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def test_processes_read_disjoint_shares_with_a_fresh_order_each_epoch(shards):
  config = data_config(source="arrayrecord", train_files=shards, eval_files=shards)
  config.batch_size = 10                        # 5 per process; 20 per process per epoch
  per_process = []
  for p in range(2):
    it = iter(pipeline.train_dataset(config, p, 2))
    batches = _take(it, 8)                      # 2 epochs
    ids = [i for b in batches for i in _ids(b)]
    epochs = [int(e) for b in batches for e in b["epoch"]]
    assert epochs == [0] * 20 + [1] * 20
    assert sorted(ids[:20]) == sorted(set(ids[:20]))          # no repeats within an epoch
    per_process.append((ids[:20], ids[20:]))
  (a0, a1), (b0, b1) = per_process
  assert set(a0).isdisjoint(b0) and set(a0) | set(b0) == set(range(40))
  assert set(a1).isdisjoint(b1) and set(a1) | set(b1) == set(range(40))
  assert a0 != a1 and set(a0) != set(a1)        # reshuffled globally for epoch 1


def test_order_is_a_function_of_the_seed(shards):
  config = data_config(source="arrayrecord", train_files=shards, eval_files=shards, flip=True)
  first = _take(iter(pipeline.train_dataset(config)), 3)
  _same(first, _take(iter(pipeline.train_dataset(config)), 3))
  config.seed = 1
  other = _take(iter(pipeline.train_dataset(config)), 3)
  assert [_ids(b) for b in first] != [_ids(b) for b in other]


def test_resume_in_process_and_mid_multi_caption(tmp_path):
  recs = [pipeline.sources.encode_record(r["image"], [f"record {i}", f"record {i}",
                                                      f"record {i}"], label=i)
          for i, r in enumerate(pipeline.sources.decode_record(x) for x in records(0, 9))]
  write_arrayrecord(str(tmp_path / "m.arrayrecord"), recs)
  config = data_config(source="arrayrecord", train_files=str(tmp_path / "m.arrayrecord"),
                       eval_files=str(tmp_path / "m.arrayrecord"), captions="all")
  config.batch_size = 4                 # 3 captions per record: batches split records
  it = iter(pipeline.train_dataset(config))
  head = _take(it, 2)                   # 8 examples: stops 2/3 through the third record
  state = it.get_state()
  expected = _take(it, 5)
  ids = [i for b in head + expected for i in _ids(b)]
  assert all(len(set(ids[k:k + 3])) == 1 for k in range(0, 27, 3))   # one per caption
  assert len(set(ids[:27])) == 9                                     # = one epoch
  groups = [int(g) for b in head + expected for g in b["group"]]
  assert groups == [k // 3 for k in range(28)]   # one group per record: its stream position
  it2 = iter(pipeline.train_dataset(config))
  it2.set_state(json.loads(json.dumps(state)))          # states are JSON, as in checkpoints
  _same(expected, _take(it2, 5))


def test_resume_with_two_worker_processes(shards):
  config = data_config(source="arrayrecord", train_files=shards, eval_files=shards,
                       num_workers=2, flip=True)
  ds = pipeline.train_dataset(config)
  it = iter(ds)
  try:
    _take(it, 3)
    state = it.get_state()
    expected = _take(it, 6)
  finally:
    it.close() if hasattr(it, "close") else None
  it2 = iter(pipeline.train_dataset(config))
  try:
    it2.set_state(state)
    got = _take(it2, 6)
  finally:
    it2.close() if hasattr(it2, "close") else None
  _same(expected, got)
  # The two workers share one epoch between them: 9 batches (72 examples) hold each of
  # the 40 examples at least once and at most twice.
  it3 = iter(pipeline.train_dataset(config))
  try:
    fresh = _take(it3, 9)
  finally:
    it3.close() if hasattr(it3, "close") else None
  _same(fresh[3:], expected)             # same (seed, processes, workers): same batches
  ids = [i for b in fresh for i in _ids(b)]
  counts = np.bincount(ids, minlength=40)
  assert counts.min() >= 1 and counts.max() <= 2


def test_all_bad_data_fails_loudly_instead_of_spinning(tmp_path, monkeypatch):
  write_arrayrecord(str(tmp_path / "bad.arrayrecord"), [b"not a record"] * 5)
  config = data_config(source="arrayrecord", train_files=str(tmp_path / "bad.arrayrecord"),
                       eval_files=str(tmp_path / "bad.arrayrecord"))
  monkeypatch.setattr(pipeline, "MAX_CONSECUTIVE_BAD", 50)
  with pytest.raises(sources.SourceError, match="50 unreadable examples in a row"):
    next(iter(pipeline.train_dataset(config)))
  with pytest.raises(ValueError, match="no readable examples"):
    pipeline.eval_arrays(config)


def test_float_output_and_clip_normalisation(shards):
  config = data_config(source="arrayrecord", train_files=shards, eval_files=shards)
  u8 = next(iter(pipeline.train_dataset(config)))["image"]
  config.data.image_dtype = "float32"
  f32 = next(iter(pipeline.train_dataset(config)))["image"]
  assert f32.dtype == np.float32
  np.testing.assert_array_equal(f32, u8.astype(np.float32))
  config.data.normalize = "clip"
  clip = next(iter(pipeline.train_dataset(config)))["image"]
  from xmodal.data import transforms
  np.testing.assert_allclose(clip, (u8 / 255.0 - transforms.CLIP_MEAN) / transforms.CLIP_STD,
                             rtol=1e-5, atol=1e-5)


def test_group_ids_join_the_copies_of_a_record_on_any_number_of_processes(tmp_path):
  """captions="all": the k examples of one record share a group id, any two records' ids
  differ (also across processes), and the id of an example does not depend on how many
  processes read the stream."""
  recs = [pipeline.sources.encode_record(r["image"], [f"record {i}"] * (1 + i % 3), label=i)
          for i, r in enumerate(pipeline.sources.decode_record(x) for x in records(0, 12))]
  write_arrayrecord(str(tmp_path / "m.arrayrecord"), recs)
  config = data_config(source="arrayrecord", train_files=str(tmp_path / "m.arrayrecord"),
                       eval_files=str(tmp_path / "m.arrayrecord"), captions="all")

  def read(process_index, process_count, batches):
    """[(group, record, epoch)] of every example."""
    it = iter(pipeline.train_dataset(config, process_index, process_count))
    out = []
    for b in _take(it, batches):
      assert b["group"].dtype == np.int32
      out += [(int(g), i, int(e)) for g, i, e in zip(b["group"], _ids(b), b["epoch"])]
    return out

  single = read(0, 1, 6)            # 48 examples: 12 records with 1 + i % 3 captions, twice
  members = {}
  for g, i, e in single:
    members.setdefault(g, []).append((i, e))
  assert sorted(members) == list(range(24))        # the records' global stream positions
  for g, copies in members.items():                # a group = every caption of one record
    (i, e), = set(copies)
    assert len(copies) == 1 + i % 3 and e == g // 12
  assert len({copies[0] for copies in members.values()}) == 24   # and records differ

  two = [read(p, 2, 3) for p in range(2)]          # 2 processes x 3 batches of 4
  for p in range(2):
    assert all(g % 2 == p for g, _, _ in two[p])   # process p reads positions p, p + 2, ...
    for g, i, e in two[p]:
      assert (i, e) == members[g][0]               # the same record as on one process


def test_oversized_images_are_skipped_with_the_reason_and_transparency_is_composited(
    tmp_path, caplog):
  """A manifest with one PNG over data.max_image_pixels and transparent PNGs: the big one
  is skipped and counted in training and evaluation, the log says why; the transparent
  ones come out over data.alpha_background (not black)."""
  from PIL import Image
  rows = []
  for i in range(8):
    rgba = np.zeros((24, 24, 4), np.uint8)               # transparent black...
    rgba[8:16, 8:16] = (200, 0, 0, 255)                   # ...around an opaque red square
    Image.fromarray(rgba, "RGBA").save(tmp_path / f"{i}.png")
    rows.append({"image": f"{i}.png", "caption": f"caption number {i}"})
  Image.new("RGB", (3000, 2500), (0, 0, 255)).save(tmp_path / "huge.png")
  rows.insert(3, {"image": "huge.png", "caption": "caption number 99"})
  (tmp_path / "m.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
  config = data_config(source="manifest", train_files=str(tmp_path / "m.jsonl"),
                       eval_files=str(tmp_path / "m.jsonl"), max_image_pixels=5_000_000,
                       alpha_background=(0, 255, 0))
  config.data.crop_scale = (1.0, 1.0)
  config.data.crop_ratio = (1.0, 1.0)
  with caplog.at_level("WARNING"):
    batch = next(iter(pipeline.train_dataset(config)))
  assert int(batch["skipped"].sum()) == 1 and 99 not in _ids(batch)
  assert any("image over data.max_image_pixels" in r.getMessage() and "huge.png" in
             r.getMessage() and "3000 x 2500 = 7.5M pixels" in r.getMessage()
             for r in caplog.records)
  assert (batch["image"][:, 0, 0] == (0, 255, 0)).all()  # corners: the background
  assert (batch["image"][:, 8, 8] == (200, 0, 0)).all()
  evaluation = pipeline.eval_arrays(config)
  assert evaluation["skipped"] == 1 and len(evaluation["image"]) == 8
  assert (evaluation["image"][:, 0, 0] == (0, 255, 0)).all()
  config.data.max_image_pixels = 0                        # no limit: the big one is read
  assert pipeline.eval_arrays(config)["skipped"] == 0
