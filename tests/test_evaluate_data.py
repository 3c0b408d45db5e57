"""A task's data through the pipeline: its config, the rows it reads, what it skips."""

import json

import ml_collections
import numpy as np
import pytest

from xmodal.data import shapes
from xmodal.evaluate import data as data_lib
from tiny import make_tiny_config


def _manifest(tmp_path, rows):
  from PIL import Image
  for i, _ in enumerate(rows):
    Image.fromarray(shapes.render(shapes.SHAPES[i % 5], "red", "large", 1, 1, 16,
                                  np.random.default_rng(i))).save(tmp_path / f"{i}.png")
  path = tmp_path / "rows.jsonl"
  path.write_text("\n".join(json.dumps({"image": f"{i}.png", **r}) for i, r in enumerate(rows)))
  return str(path)


def test_task_data_replaces_the_runs_and_probes_read_the_same_kind():
  config = make_tiny_config()
  task = ml_collections.ConfigDict(dict(data=dict(eval_source="manifest", eval_files="a.jsonl",
                                                  train_files="b.jsonl")))
  out = data_lib.task_config(config, task)
  assert (out.data.eval_source, out.data.source, out.data.eval_files, out.data.train_files) == (
      "manifest", "manifest", "a.jsonl", "b.jsonl")
  assert config.data.source == "shapes"                      # the run's config is unchanged
  own = data_lib.task_config(config, ml_collections.ConfigDict(dict(data={})))
  assert own.to_dict() == config.to_dict()
  assert data_lib.data_key(task) != data_lib.data_key({})


def test_rows_without_captions_serve_image_tasks_and_are_skipped_for_text(tmp_path):
  """A classification set has no captions: zero-shot and probes read its images; a task
  that embeds text drops (and counts) the rows without a usable caption."""
  path = _manifest(tmp_path, [{"caption": [], "label": 0}, {"caption": "a dog", "label": 1},
                              {"caption": "", "label": 2}, {"caption": ["", "two", "three"],
                                                            "label": 3}])
  config = make_tiny_config(**{"data.eval_source": "manifest", "data.eval_files": path})
  reader = data_lib.Reader(config, "eval")
  images = reader.read(np.arange(4), ("image",))
  assert images.skipped == 0 and images.rows["label"].tolist() == [0, 1, 2, 3]
  assert images.rows["image"].shape == (4, 16, 16, 3)
  pairs = reader.read(np.arange(4), ("image", "text"), captions=True)
  assert pairs.skipped == 2 and pairs.rows["index"].tolist() == [1, 3]
  assert pairs.rows["captions"] == [["a dog"], ["two", "three"]]
  assert pairs.rows["key"][0].endswith("1.png")
  # The first usable caption is the one the pipeline tokenizes, as in training's eval.
  np.testing.assert_array_equal(pairs.rows["text"][1], reader.tokenize(["two"])[0])


def test_a_missing_record_field_skips_the_row():
  config = make_tiny_config(**{"data.shapes_eval_size": 5})
  chunk = data_lib.Reader(config, "eval").read(np.arange(5), ("image",), fields=("expression",))
  assert chunk.skipped == 5 and len(chunk) == 0


def test_a_sample_is_random_sorted_and_the_same_every_time():
  config = make_tiny_config(**{"data.shapes_eval_size": 100})
  reader = data_lib.Reader(config, "eval")
  a, b = reader.sample(10), reader.sample(10)
  np.testing.assert_array_equal(a, b)
  assert len(set(a)) == 10 and list(a) == sorted(a) and a.max() > 20   # not the first 10
  np.testing.assert_array_equal(reader.sample(0), np.arange(100))
  np.testing.assert_array_equal(reader.sample(500), np.arange(100))


@pytest.mark.parametrize("caption, expected", [
    ("a", ["a"]), (b"caf\xc3\xa9", ["café"]), (b"\xff", []), (["", "  ", "x"], ["x"]),
    (np.array([b"one", b"two"]), ["one", "two"])])
def test_usable_captions(caption, expected):
  assert data_lib.usable_captions(caption) == expected
