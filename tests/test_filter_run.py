"""`xmodal filter`: which rows it keeps (against a numpy reference), what it writes, and the
DataComp-style round trip: embed a manifest, keep the top half, train on what is kept."""

import json

import jax
import numpy as np
import pytest

from xmodal import cli, config as config_lib, embed_run, filter_run, notebook, parallel
from xmodal.data import manifest, shapes
from xmodal.models import model as model_lib
from tiny import make_tiny_config


def test_threshold_and_fraction_keep_the_best_rows_and_never_non_finite_ones():
  score = np.array([0.1, 0.5, np.nan, 0.5, 0.9, -np.inf, 0.3])
  s = filter_run.scores(np.array([[1.0, 0.0], [np.nan, 0.0]]), np.array([[0.6, 0.8], [1, 0]]))
  assert s[0] == pytest.approx(0.6) and s[1] == -np.inf
  finite = np.where(np.isfinite(score), score, -np.inf)
  assert filter_run.select(finite, threshold=0.5).tolist() == [0, 1, 0, 1, 1, 0, 0]
  # ceil(0.5 x 7) = 4 rows: 0.9, then the two 0.5s (earlier first), then 0.3.
  assert filter_run.select(finite, fraction=0.5).tolist() == [0, 1, 0, 1, 1, 0, 1]
  assert filter_run.select(finite, fraction=0.2).tolist() == [0, 1, 0, 0, 1, 0, 0]   # a tie split
  assert filter_run.select(finite, fraction=1.0).sum() == 5             # not the -inf ones
  for bad in (dict(), dict(threshold=0.1, fraction=0.5), dict(fraction=0.0)):
    with pytest.raises(config_lib.ConfigError):
      filter_run.select(finite, **bad)


def _manifest(tmp_path, n=24):
  from PIL import Image
  colours = list(shapes.COLOURS)
  rows = []
  for i in range(n):
    shape, colour = shapes.SHAPES[i % 5], colours[i % 6]
    Image.fromarray(shapes.render(shape, colour, "large", 1, 1, 16,
                                  np.random.default_rng(i))).save(tmp_path / f"{i}.png")
    rows.append({"image": f"{i}.png", "caption": f"a large {colour} {shape}", "label": i % 3})
  path = tmp_path / "corpus.jsonl"
  path.write_text("\n".join(json.dumps(r) for r in rows))
  return str(path), rows


def test_the_kept_rows_are_the_most_similar_half_of_the_source(tmp_path):
  path, rows = _manifest(tmp_path)
  config = make_tiny_config(**{"data.source": "manifest", "data.train_files": path,
                               "data.eval_files": path})
  model = model_lib.MultiTower(config)
  params = model_lib.unbox(jax.jit(model.init)(jax.random.key(0),
                                               model_lib.dummy_inputs(config))["params"])
  mesh = parallel.make_mesh(config)
  loaded = notebook.LoadedModel(config, params, 0, mesh)
  emb = str(tmp_path / "emb")
  embed_run.embed_split(loaded, emb, "train", shard_size=10, fmt="parquet")
  _, z = embed_run.read(emb)
  cosine = np.sum(z["image"] * z["text"], axis=1)
  expected = np.argsort(-cosine, kind="stable")[:12]
  done = filter_run.filter_embeddings(emb, str(tmp_path / "kept.jsonl"), fraction=0.5)
  assert done["rows"] == 24 and done["kept"] == 12
  assert done["threshold"] == pytest.approx(cosine[expected].min())
  kept = [json.loads(line) for line in open(tmp_path / "kept.jsonl")]
  assert [r["image"] for r in kept] == [str(tmp_path / rows[i]["image"]) for i in
                                        sorted(expected)]
  assert [r["caption"] for r in kept] == [rows[i]["caption"] for i in sorted(expected)]
  np.testing.assert_allclose([r["similarity"] for r in kept], cosine[sorted(expected)],
                             rtol=1e-5)
  # The new manifest reads as one.
  assert len(manifest.ManifestSource(str(tmp_path / "kept.jsonl"))) == 12
  with pytest.raises(config_lib.ConfigError, match="--pair: image:audio must be 'a:b'"):
    filter_run.filter_embeddings(emb, str(tmp_path / "k.jsonl"), "image:audio", fraction=0.5)


def test_pixels_go_to_parquet_as_png_and_jsonl_refuses_bytes(tmp_path):
  record = {"image": np.zeros((4, 4, 3), np.uint8), "caption": "x", "label": np.int32(2),
            "_bad_reason": "internal"}
  row = filter_run._row(record, 0.5, jsonl=False, where="r")
  assert row["image"][:4] == b"\x89PNG" and row["label"] == 2 and "_bad_reason" not in row
  with pytest.raises(config_lib.ConfigError, match="write a .parquet manifest instead"):
    filter_run._row(record, 0.5, jsonl=True, where="r")


@pytest.mark.slow
def test_embed_filter_train_round_trip(tmp_path, capsys):
  """Train on a manifest, `xmodal embed` it, `xmodal filter --fraction 0.5`, then train on
  the filtered manifest: it holds half the rows and the run learns from it."""
  from xmodal import metrics as metrics_lib, train
  path, _ = _manifest(tmp_path, 40)
  config = make_tiny_config(**{"data.source": "manifest", "data.train_files": path,
                               "data.eval_files": path, "train.total_steps": 4,
                               "optim.warmup_steps": 1})
  run = str(tmp_path / "run")
  train.train(config, run)
  emb, kept = str(tmp_path / "emb"), str(tmp_path / "kept.jsonl")
  assert cli.main(["xmodal", "embed", f"--workdir={run}", f"--out={emb}",
                   "--shard_size=16"]) == 0
  assert "embedded 40 rows (0 unreadable) into 3 shards" in capsys.readouterr().out
  assert cli.main(["xmodal", "filter", f"--embeddings={emb}", f"--out={kept}",
                   "--fraction=0.5"]) == 0
  assert "kept 20 of 40 rows" in capsys.readouterr().out
  assert cli.main(["xmodal", "embed", f"--workdir={run}", f"--out={emb}"]) == 2   # other size
  assert "holds embeddings with shard_size=16" in capsys.readouterr().err
  filtered = make_tiny_config(**{"data.source": "manifest", "data.train_files": kept,
                                 "data.eval_files": kept, "train.total_steps": 12,
                                 "optim.warmup_steps": 2, "optim.lr": 3e-3})
  final = train.train(filtered, str(tmp_path / "filtered"))
  losses = [r["loss"] for r in metrics_lib.read_jsonl(str(tmp_path / "filtered")) if "loss" in r]
  assert final["retrieval/examples"] == 20 and np.mean(losses[-3:]) < np.mean(losses[:3])
