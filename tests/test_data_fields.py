"""Records with any fields, end to end: audio (WAV files), video (MP4), images (PNG),
vectors and captions in one record set, read from a JSONL manifest, webdataset shards and a Parquet
manifest mixed together, trained with `train.train`: the towers learn (retrieval far above
chance) and a run stopped half-way resumes to the uninterrupted loss sequence exactly."""

import io
import json
import os
import tarfile

import numpy as np
import pytest

from xmodal import checkpoint, config as config_lib, default_config, metrics as metrics_lib
from xmodal import train
from xmodal.data import audio as audio_lib, pipeline
from tiny import make_tiny_config

CLASSES = 8
SAMPLE_RATE = 8000
WORDS = ("amber", "basalt", "cobalt", "dune", "ember", "fjord", "garnet", "heron")


def _wav(label, rng) -> bytes:
  import soundfile as sf
  n = audio_lib.num_samples(32, 200, 80) + int(rng.integers(0, 400))
  t = np.arange(n) / SAMPLE_RATE
  wave = 0.4 * np.sin(2 * np.pi * 250 * 1.4 ** label * t) + rng.normal(0, 0.05, n)
  buf = io.BytesIO()
  sf.write(buf, wave, SAMPLE_RATE, format="WAV", subtype="PCM_16")
  return buf.getvalue()


def _mp4(label, rng) -> bytes:
  import av
  colour = np.random.default_rng(1234).integers(0, 256, (CLASSES, 3))[label]
  buf = io.BytesIO()
  with av.open(buf, mode="w", format="mp4") as container:
    stream = container.add_stream("mpeg4", rate=8)
    stream.width = stream.height = 16
    stream.pix_fmt = "yuv420p"
    for _ in range(4):
      frame = np.clip(colour + rng.normal(0, 20, (16, 16, 3)), 0, 255).astype(np.uint8)
      container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
    container.mux(stream.encode())
  return buf.getvalue()


def _vector(label, rng) -> np.ndarray:
  protos = np.random.default_rng(99).normal(0, 1, (CLASSES, 8))
  return (protos[label] + rng.normal(0, 0.3, 8)).astype(np.float32)


def _png(label, rng) -> bytes:
  """A class-coloured shape (the embedded dataset's renderer), PNG-encoded."""
  from PIL import Image
  from xmodal.data import shapes
  shape, colour = shapes.SHAPES[label % 5], list(shapes.COLOURS)[label % 6]
  buf = io.BytesIO()
  Image.fromarray(shapes.render(shape, colour, "large", label % 3, 1, 24, rng)).save(buf, "PNG")
  return buf.getvalue()


def _example(i, rng):
  label = i % CLASSES
  return label, {"audio": _wav(label, rng), "video": _mp4(label, rng),
                 "image": _png(label, rng), "vector": _vector(label, rng),
                 "caption": f"a {WORDS[label]} thing"}


def write_corpus(folder, n_train=48, n_eval=8) -> dict:
  """The same kind of records in three formats; returns the config's data patterns."""
  import pyarrow as pa
  import pyarrow.parquet as pq
  rng = np.random.default_rng(0)
  os.makedirs(folder / "files", exist_ok=True)

  def jsonl(name, start, n):
    with open(folder / name, "w") as f:
      for i in range(start, start + n):
        label, ex = _example(i, rng)
        for field, ext in (("audio", "wav"), ("video", "mp4"), ("image", "png")):
          (folder / "files" / f"{i}.{ext}").write_bytes(ex[field])
        f.write(json.dumps({"audio": f"files/{i}.wav", "video": f"files/{i}.mp4",
                            "image": f"files/{i}.png",
                            "vector": ex["vector"].tolist(), "caption": ex["caption"],
                            "label": label}) + "\n")

  jsonl("train.jsonl", 0, n_train)
  jsonl("eval.jsonl", 10_000, n_eval)
  with tarfile.open(folder / "shard-0.tar", "w") as tf:
    for i in range(n_train, 2 * n_train):
      _, ex = _example(i, rng)
      vec = io.BytesIO()
      np.save(vec, ex["vector"])
      for ext, data in (("wav", ex["audio"]), ("mp4", ex["video"]), ("png", ex["image"]),
                        ("npy", vec.getvalue()), ("txt", ex["caption"].encode())):
        info = tarfile.TarInfo(f"{i:05d}.{ext}")
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
  rows = [_example(i, rng)[1] for i in range(2 * n_train, 3 * n_train)]
  table = pa.table({"audio": [r["audio"] for r in rows], "video": [r["video"] for r in rows],
                    "image": [r["image"] for r in rows],
                    "vector": [r["vector"].tolist() for r in rows],
                    "caption": [r["caption"] for r in rows]})
  pq.write_table(table, folder / "train.parquet")
  return {"mixture": f"manifest:{folder}/train.jsonl@1; webdataset:{folder}/shard-0.tar@1; "
                     f"manifest:{folder}/train.parquet@1",
          "eval": str(folder / "eval.jsonl")}


def _tower(kind, **fields):
  t = default_config.tower_defaults(kind)
  t.update(dict(width=32, depth=1, num_heads=2))
  t.update(fields)
  return t


def records_config(data, **overrides):
  c = make_tiny_config(**overrides)
  c.towers = default_config.ConfigDict({
      "audio": _tower("audio", frames=32, n_mels=16, patch_size=8, sample_rate=SAMPLE_RATE,
                      n_fft=200, hop=80),
      "video": _tower("video", frames=2, patch_size=8),
      "vector": _tower("vector", features=8),
      "image": c.towers.image,
      "text": c.towers.text})
  c.data.source, c.data.mixture = "mixture", data["mixture"]
  c.data.eval_source, c.data.eval_files = "manifest", data["eval"]
  c.data.context_length = 16
  c.optim.lr = 3e-3
  return c


def test_pipeline_reads_every_format_into_every_tower(tmp_path):
  data = write_corpus(tmp_path, n_train=8, n_eval=8)
  config = records_config(data, batch_size=24)
  config_lib.validate(config, 1)
  batch = next(iter(pipeline.train_dataset(config)))
  assert batch["audio"].shape == (24, 32, 16) and batch["audio"].dtype == np.float32
  assert batch["video"].shape == (24, 2, 16, 16, 3) and batch["video"].dtype == np.uint8
  assert batch["vector"].shape == (24, 8) and batch["text"].shape == (24, 16)
  assert batch["image"].shape == (24, 16, 16, 3) and batch["image"].dtype == np.uint8
  assert sorted(set(batch["source"].tolist())) == [0, 1, 2]       # all three formats
  assert int(batch["skipped"].sum()) == 0
  ev = pipeline.eval_arrays(config)
  assert ev["caption"][:2] == ["a amber thing", "a basalt thing"]
  np.testing.assert_array_equal(ev["label"], np.arange(8))


class _Stop(Exception):
  """Stands in for a kill right after a checkpoint (tests/test_train.py kills a real
  process with SIGKILL; here the same config stops and resumes in-process)."""


@pytest.mark.slow
def test_five_modalities_from_three_formats_learn(tmp_path):
  """Audio, video, image, vector and text towers trained on the three formats mixed: every
  one of the 20 retrieval directions is far above chance on held-out records, and the
  notebook API's encode() of the files equals the pipeline's evaluation arrays."""
  data = write_corpus(tmp_path)
  steps = {"train.total_steps": 30, "train.checkpoint_every": 30, "batch_size": 32}
  final = train.train(records_config(data, **steps), str(tmp_path / "full"))
  # 8 eval records, one per class: chance R@1 is 1/8 for each of the 20 directions.
  recall = {k.split("/")[1]: v for k, v in final.items() if k.endswith("/R1")}
  assert len(recall) == 20 and min(recall.values()) >= 3 / 8, recall
  assert np.mean(list(recall.values())) >= 0.7, recall
  losses = [r["loss"] for r in metrics_lib.read_jsonl(str(tmp_path / "full")) if "loss" in r]
  assert np.mean(losses[-6:]) < np.mean(losses[:6]) - 0.5, losses
  import xmodal
  m = xmodal.load(str(tmp_path / "full"))
  ev = pipeline.eval_arrays(records_config(data))
  rows = [json.loads(line) for line in open(data["eval"])]
  by_path = m.encode(audio=[str(tmp_path / r["audio"]) for r in rows],
                     video=[str(tmp_path / r["video"]) for r in rows])
  by_array = m.encode(audio=ev["audio"], video=ev["video"])
  for key in ("audio", "video"):
    np.testing.assert_allclose(by_path[key], by_array[key], atol=1e-6)


@pytest.mark.slow
def test_records_from_three_formats_resume_exactly(tmp_path, monkeypatch):
  """A run stopped right after its step-6 checkpoint resumes to the uninterrupted run's
  losses exactly: the mixture's iterator state, the audio crops and the vectors all come
  back (audio, vector and text towers: the compile stays small)."""
  data = write_corpus(tmp_path, n_train=16)

  def config():
    c = records_config(data, **{"train.total_steps": 12, "train.checkpoint_every": 6,
                                "batch_size": 16})
    del c.towers["video"], c.towers["image"]
    return c

  train.train(config(), str(tmp_path / "full"))
  save = checkpoint.Checkpointer.save

  def save_then_stop(self, step, *args, **kwargs):
    save(self, step, *args, **kwargs)
    if step == 6:
      self.wait()
      raise _Stop

  monkeypatch.setattr(checkpoint.Checkpointer, "save", save_then_stop)
  with pytest.raises(_Stop):
    train.train(config(), str(tmp_path / "half"))
  monkeypatch.undo()
  train.train(config(), str(tmp_path / "half"))                     # resumes at step 6
  full, half = ({r["step"]: r["loss"] for r in metrics_lib.read_jsonl(str(tmp_path / w))
                 if "loss" in r} for w in ("full", "half"))
  assert [half[s] for s in range(7, 13)] == [full[s] for s in range(7, 13)]


def test_converter_writes_any_fields_and_the_records_read_the_same(tmp_path):
  """tools/convert_to_arrayrecord.py --fields audio,video,vector,caption on the manifest:
  the ArrayRecord shards (files stored as bytes, vectors as arrays) give the same eval
  arrays as the manifest they came from."""
  import subprocess
  import sys
  data = write_corpus(tmp_path, n_train=4, n_eval=8)
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  out = subprocess.run(
      [sys.executable, os.path.join(root, "tools", "convert_to_arrayrecord.py"), "--input",
       f"manifest:{data['eval']}", "--output", str(tmp_path / "ar" / "eval"), "--fields",
       "audio,video,image,vector,caption", "--records_per_shard", "3", "--processes", "2"],
      capture_output=True, text=True, check=True)
  summary = json.loads((tmp_path / "ar" / "eval-summary.json").read_text())
  assert summary["written"] == 8 and summary["shards"] == 3, out.stdout
  config = records_config(data)
  from_manifest = pipeline.eval_arrays(config)
  config.data.eval_source, config.data.eval_files = "arrayrecord", f"{tmp_path}/ar/eval-*.arrayrecord"
  from_records = pipeline.eval_arrays(config)
  for key in ("audio", "video", "image", "vector", "text", "label"):
    np.testing.assert_array_equal(from_records[key], from_manifest[key])
