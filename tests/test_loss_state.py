"""The loss's state in the train state (losses/state.py): EMA copies and feature queues,
their shardings, and what a step does to them."""

import jax
import ml_collections
import numpy as np
import pytest

import loss_cases
from xmodal import losses, optim, parallel, sharding, train
from xmodal.losses import state as state_lib, terms
from xmodal.models import model as model_lib


def _config(momentum=0.9, queue=0, **kw):
  c = loss_cases.vector_config(batch=16, dim=8)
  c.towers = loss_cases.vector_towers(x=dict(features=8, width=16), y=dict(features=8, width=16))
  c.train.frozen = ()
  c.loss.terms = ml_collections.ConfigDict({"mod": terms.section(
      "momentum", momentum=momentum, queue=queue, **kw)})
  return c


def _params(config):
  model = model_lib.MultiTower(config)
  return model_lib.unbox(model.init(jax.random.key(0), model_lib.dummy_inputs(config))["params"])


@pytest.mark.parametrize("m", [0.0, 0.9])
def test_ema_moves_towards_the_params(m):
  """ema <- m ema + (1 - m) params; momentum 0 makes the EMA copy equal the params."""
  config = _config(momentum=m)
  params = _params(config)
  loss_state = state_lib.LossState.from_config(config)
  init = loss_state.init(params)["loss"]
  moved = jax.tree.map(lambda p: p + 1.0, params)
  prepared = loss_state.prepare(init, moved, {"mod": m})
  for t in ("x", "y"):
    for e, p0, p1 in zip(jax.tree.leaves(prepared["ema"]["mod"][t]), jax.tree.leaves(params[t]),
                         jax.tree.leaves(moved[t])):
      np.testing.assert_allclose(e, m * p0 + (1 - m) * p1, rtol=1e-6)
      if m == 0.0:
        np.testing.assert_array_equal(e, p1)


def test_queue_is_a_fifo_per_device():
  """Each device writes its rows into its own part of the queue, oldest first; the pointer
  wraps; entries not yet written are invalid; ids of entries are never positives."""
  config = _config(queue=32)
  obj = losses.Objective(config, jax.make_mesh((4, 1, 1), ("data", "fsdp", "model"),
                                               axis_types=(jax.sharding.AxisType.Auto,) * 3,
                                               devices=jax.devices()[:4]))
  params = _params(config)
  prepared = obj.init_state(params)["loss"]
  q = prepared["queue"]["mod"]["x:y"]["ab"]
  assert q["feat"].shape == (32, 8) and not bool(q["meta"]["valid"].any())
  rows = []
  for step in range(3):
    emb = {m: loss_cases.unit(jax.random.key(10 * step + i), (16, 8)) for i, m in enumerate("xy")}
    ema = {"mod": {m: loss_cases.unit(jax.random.key(100 + 10 * step + i), (16, 8))
                   for i, m in enumerate("xy")}}
    _, (_, updates) = obj.loss(params, emb, {"ema": ema, "queues": prepared["queue"]})
    prepared = obj.new_state(prepared, updates)["loss"]
    rows.append(np.asarray(ema["mod"]["y"]))          # the queue keeps EMA features
  q = prepared["queue"]["mod"]
  assert int(q["ptr"]) == (3 * 16) % 32
  feat = np.asarray(q["x:y"]["ab"]["feat"]).reshape(4, 8, 8)     # device, slot, dim
  # device d's 4 rows of a step are rows 4d..4d+3; slots 0-3 hold step 2 (wrapped), 4-7 step 1
  for d in range(4):
    np.testing.assert_allclose(feat[d, 0:4], rows[2][4 * d:4 * d + 4], rtol=1e-6)
    np.testing.assert_allclose(feat[d, 4:8], rows[1][4 * d:4 * d + 4], rtol=1e-6)
  assert bool(q["x:y"]["ab"]["meta"]["valid"].all())
  assert (np.asarray(q["x:y"]["ab"]["meta"]["ids"]) == -1).all()


def test_state_shardings_follow_params_and_batch():
  """EMA leaves take their parameter's sharding (FSDP here), queue leaves the batch's."""
  config = _config(queue=32)
  config.mesh.data, config.mesh.fsdp = 2, 4
  config.towers.x.width = config.towers.y.width = 32
  mesh = parallel.make_mesh(config, jax.devices())
  model = model_lib.MultiTower(config)
  tx = optim.make_optimizer(config)
  shardings = sharding.state_shardings(model, tx, config, mesh)
  abstract = jax.eval_shape(train.init_state_fn(model, tx, config), jax.random.key(0))
  assert jax.tree.structure(shardings) == jax.tree.structure(abstract)
  ema = shardings["loss"]["ema"]["mod"]["x"]
  assert jax.tree.leaves(ema) == jax.tree.leaves(shardings["params"]["x"])
  assert any("fsdp" in str(s.spec) for s in jax.tree.leaves(ema))
  feat = shardings["loss"]["queue"]["mod"]["x:y"]["ab"]["feat"]
  assert feat.spec == jax.sharding.PartitionSpec(("data", "fsdp"))
  assert shardings["loss"]["queue"]["mod"]["ptr"].spec == jax.sharding.PartitionSpec()


def test_stateless_objectives_keep_the_state_as_it_was():
  """CLIP alone adds nothing to the train state (checkpoints of such runs are unchanged)."""
  config = loss_cases.vector_config(batch=16, dim=8)
  config.towers = loss_cases.vector_towers(x=dict(features=8), y=dict(features=8))
  config.train.frozen = ()
  assert state_lib.LossState.from_config(config).init(_params(config)) == {}
