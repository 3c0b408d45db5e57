"""The embeddings evaluators see: shared between tasks on the same data, inputs kept across
rounds when they fit, non-finite rows counted."""

import jax
import ml_collections
import numpy as np
import pytest

from xmodal import embed, parallel
from xmodal.evaluate import context as context_lib, data as data_lib, kinds
from xmodal.models import model as model_lib
from tiny import make_tiny_config


@pytest.fixture(scope="module")
def setup():
  config = make_tiny_config(**{"data.shapes_eval_size": 48})
  model = model_lib.MultiTower(config)
  params = model_lib.unbox(jax.jit(model.init)(jax.random.key(0),
                                               model_lib.dummy_inputs(config))["params"])
  return config, params, embed.Embedder(model, parallel.make_mesh(config), 64)


class _Counting:
  """An embedder that counts what it embeds."""

  def __init__(self, inner):
    self.inner, self.mesh, self.batch_size, self.rows = inner, inner.mesh, inner.batch_size, 0

  def __call__(self, params, modality, inputs):
    self.rows += len(inputs)
    return self.inner(params, modality, inputs)


def test_tasks_on_the_same_rows_share_embeddings_and_rounds_keep_inputs(setup, monkeypatch):
  config, params, embedder = setup
  counting = _Counting(embedder)
  ctx = context_lib.Context(config, counting, params)
  reads = []
  real_read = data_lib.Reader.read
  monkeypatch.setattr(data_lib.Reader, "read",
                      lambda self, *a, **k: reads.append(1) or real_read(self, *a, **k))
  task = kinds.new("retrieval")
  both = ctx.embedded(task, "eval", ("image", "text"))
  assert counting.rows == 96 and len(reads) == 1
  # Another task on the same rows: nothing read or embedded again (nothing was skipped,
  # so the image-only read has the same rows).
  again = ctx.embedded(kinds.new("zeroshot"), "eval", ("image",))
  assert again is both and counting.rows == 96
  # A new round (new params): embedded again, from the inputs kept in memory.
  ctx.new_round(jax.tree.map(lambda x: x * 1.5, params), 1)
  third = ctx.embedded(task, "eval", ("image", "text"))
  assert counting.rows == 192 and len(reads) == 1
  assert not np.allclose(third.z["image"], both.z["image"])
  # Other data: read.
  ctx.embedded(kinds.new("retrieval", data=dict(shapes_eval_size=10)), "eval", ("image",))
  assert len(reads) == 2 and counting.rows == 202


def test_splits_over_the_input_budget_are_read_again_each_round(setup, monkeypatch):
  config, params, embedder = setup
  monkeypatch.setattr(context_lib, "INPUT_CACHE_BYTES", 1000)
  ctx = context_lib.Context(config, embedder, params)
  reads = []
  real_read = data_lib.Reader.read
  monkeypatch.setattr(data_lib.Reader, "read",
                      lambda self, *a, **k: reads.append(1) or real_read(self, *a, **k))
  first = ctx.embedded(kinds.new("retrieval"), "eval", ("image",))
  ctx.new_round(params, 1)
  second = ctx.embedded(kinds.new("retrieval"), "eval", ("image",))
  assert len(reads) == 2
  np.testing.assert_array_equal(first.z["image"], second.z["image"])


def test_non_finite_embeddings_are_counted_per_round(setup):
  config, params, embedder = setup
  broken = jax.tree.map(lambda x: x * np.nan, params)
  ctx = context_lib.Context(config, embedder, broken)
  rows = ctx.embedded(kinds.new("retrieval"), "eval", ("image", "text"))
  assert ctx.nonfinite == 96 and not np.isfinite(rows.z["text"]).any()
  ctx.new_round(params, 1)
  ctx.embedded(kinds.new("retrieval"), "eval", ("image", "text"))
  assert ctx.nonfinite == 0


def test_tower_lookup_names_the_field(setup):
  config, params, embedder = setup
  ctx = context_lib.Context(config, embedder, params)
  ctx.where = "eval.tasks.p"
  task = ml_collections.ConfigDict(dict(tower="audio"))
  with pytest.raises(kinds.TaskError, match=r"^config.eval.tasks.p.tower: no tower 'audio'"):
    ctx.tower(task, "tower")
  assert ctx.tower(ml_collections.ConfigDict(dict(tower="")), "tower", "text") == "text"
