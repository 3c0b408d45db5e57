"""`xmodal embed`: sharded files equal to the embedder's own output, in both formats;
resuming writes only what is missing; processes split the shards between them."""

import os

import jax
import numpy as np
import pytest

from xmodal import config as config_lib, embed_run, notebook, parallel
from xmodal.data import pipeline
from xmodal.models import model as model_lib
from tiny import make_tiny_config


@pytest.fixture(scope="module")
def loaded():
  config = make_tiny_config(**{"data.shapes_eval_size": 50})
  model = model_lib.MultiTower(config)
  params = model_lib.unbox(jax.jit(model.init)(jax.random.key(0),
                                               model_lib.dummy_inputs(config))["params"])
  mesh = parallel.make_mesh(config)
  return notebook.LoadedModel(config, jax.device_put(params, parallel.replicated(mesh)), 7,
                              mesh)


@pytest.mark.parametrize("fmt", ["npy", "parquet"])
def test_shards_hold_every_row_with_its_index_and_the_embedders_values(loaded, tmp_path, fmt):
  out = str(tmp_path / "emb")
  done = embed_run.embed_split(loaded, out, "eval", fmt=fmt, shard_size=16)
  assert done == {"rows": 50, "embedded": 50, "skipped": 0, "shards": 4, "written": 4,
                  "already_there": 0}
  meta, rows = embed_run.read(out)
  assert meta["towers"] == {"image": 32, "text": 32} and meta["step"] == 7
  np.testing.assert_array_equal(rows["index"], np.arange(50))
  data = pipeline.eval_arrays(loaded.config)
  for tower in ("image", "text"):
    np.testing.assert_allclose(rows[tower], loaded.embedder(loaded.params, tower, data[tower]),
                               atol=1e-6)
  if fmt == "npy":                 # memory-mappable, as an index builder wants it
    z = np.load(os.path.join(out, "shard-00001.image.npy"), mmap_mode="r")
    assert z.shape == (16, 32)


def test_a_second_run_writes_only_the_missing_shards(loaded, tmp_path):
  out = str(tmp_path / "emb")
  embed_run.embed_split(loaded, out, "eval", shard_size=16)
  kept = os.path.join(out, "shard-00000.image.npy")
  before = os.stat(kept).st_mtime_ns
  for name in os.listdir(out):            # an interruption lost shard 2 (and left a temp file)
    if name.startswith("shard-00002"):
      os.remove(os.path.join(out, name))
  open(os.path.join(out, "shard-00002.text.npy.tmp"), "w").close()
  done = embed_run.embed_split(loaded, out, "eval", shard_size=16)
  assert (done["written"], done["already_there"], done["embedded"]) == (1, 3, 16)
  assert os.stat(kept).st_mtime_ns == before
  assert len(embed_run.read(out)[1]["index"]) == 50


def test_processes_write_disjoint_shards_that_make_up_the_whole(loaded, tmp_path):
  whole = str(tmp_path / "whole")
  split = str(tmp_path / "split")
  embed_run.embed_split(loaded, whole, "eval", ["image"], shard_size=10)
  a = embed_run.embed_split(loaded, split, "eval", ["image"], shard_size=10, process_index=0,
                            process_count=2)
  b = embed_run.embed_split(loaded, split, "eval", ["image"], shard_size=10, process_index=1,
                            process_count=2)
  assert (a["written"], b["written"]) == (3, 2)          # shards 0, 2, 4 and 1, 3
  np.testing.assert_array_equal(embed_run.read(split)[1]["image"],
                                embed_run.read(whole)[1]["image"])


def test_another_embedding_in_the_folder_is_refused(loaded, tmp_path):
  out = str(tmp_path / "emb")
  embed_run.embed_split(loaded, out, "eval", ["image"], shard_size=16)
  with pytest.raises(config_lib.ConfigError, match=r"^--out: .* holds embeddings with "
                                                   r"shard_size=16, this run would write 8"):
    embed_run.embed_split(loaded, out, "eval", ["image"], shard_size=8)
  with pytest.raises(config_lib.ConfigError, match=r"^--towers: no tower 'audio'"):
    embed_run.embed_split(loaded, str(tmp_path / "x"), "eval", ["audio"])
  os.remove(os.path.join(out, "shard-00001.index.npy"))
  with pytest.raises(FileNotFoundError, match="shard-00001 is missing"):
    embed_run.read(out)
