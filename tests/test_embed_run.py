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


@pytest.mark.slow
def test_two_processes_write_the_shards_one_process_writes(tmp_path):
  """`xmodal embed` as 2 processes x 4 CPU devices (gloo): each writes its own shards on
  its own devices; together they equal the shards of 1 process x 8 devices."""
  import subprocess
  import sys
  import portpicker
  from xmodal import train
  workdir = str(tmp_path / "run")
  train.train(make_tiny_config(**{"train.total_steps": 2, "optim.warmup_steps": 1,
                                  "data.shapes_eval_size": 70}), workdir)
  port = portpicker.pick_unused_port()
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
             JAX_PLATFORMS="cpu")
  args = ["embed", f"--workdir={workdir}", "--split=eval", "--shard_size=20"]
  procs = [subprocess.Popen(
      [sys.executable, "-m", "xmodal.cli", *args, f"--out={tmp_path / 'two'}",
       f"--coordinator=127.0.0.1:{port}", "--num_processes=2", f"--process_id={i}"],
      env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
  outputs = []
  try:
    for p in procs:
      outputs.append(p.communicate(timeout=300)[0])
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  assert [p.returncode for p in procs] == [0, 0], outputs
  assert "embedded 40 rows (0 unreadable) into 2 shards" in outputs[0]   # shards 0, 2
  assert "embedded 30 rows (0 unreadable) into 2 shards" in outputs[1]   # shards 1, 3
  from xmodal import cli
  assert cli.main(["xmodal", *args, f"--out={tmp_path / 'one'}"]) == 0
  _, two = embed_run.read(str(tmp_path / "two"))
  _, one = embed_run.read(str(tmp_path / "one"))
  np.testing.assert_array_equal(two["index"], np.arange(70))
  for tower in ("image", "text"):
    np.testing.assert_allclose(two[tower], one[tower], atol=1e-5)
