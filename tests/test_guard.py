"""Non-finite steps (xmodal/guard.py): a step whose loss or gradient is NaN/inf leaves the
whole state as it was, full batch and GradCache alike; the host counts the skipped steps and
stops after train.max_nonfinite_steps in a row."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tiny import make_tiny_config
from xmodal import default_config, guard, losses, optim, parallel, train
from xmodal.models import model as model_lib


def test_update_if_keeps_every_leaf_of_the_old_state_when_not_ok():
  old = {"params": {"w": jnp.ones((2, 3))}, "ema": {"w": jnp.zeros((2, 3))},
         "count": jnp.int32(4)}

  def update(state):             # an update that touches every leaf, one with a NaN
    new = jax.tree.map(lambda x: x + 1, state)
    new["params"]["w"] = new["params"]["w"].at[0, 0].set(jnp.nan)
    return new

  step = jax.jit(lambda ok, s: guard.update_if(ok, update, s))
  kept, taken = step(jnp.bool_(False), old), step(jnp.bool_(True), old)
  for a, b in zip(jax.tree.leaves(kept), jax.tree.leaves(old)):
    np.testing.assert_array_equal(a, b)
  for a, b in zip(jax.tree.leaves(taken), jax.tree.leaves(update(old))):
    np.testing.assert_array_equal(a, b)
  assert bool(guard.is_finite(jnp.float32(1.0), jnp.float32(2.0)))
  assert not bool(guard.is_finite(jnp.float32(1.0), jnp.float32(jnp.inf)))
  assert not bool(guard.is_finite(jnp.float32(jnp.nan), jnp.float32(2.0)))


def _vector_config():
  """Two `vector` towers on float features (cached-feature runs), where an inf can occur."""
  c = make_tiny_config(**{"optim.warmup_steps": 0, "train.total_steps": 10})
  c.towers = default_config.ConfigDict()
  for name in ("image", "text"):
    tower = default_config.tower_defaults("vector")
    tower.update(dict(features=16, encoder="identity", head="mlp", head_hidden=32))
    c.towers[name] = tower
  c.model.embed_dim = 16
  return c


@pytest.mark.parametrize("microbatches", [1, 2])
def test_a_nonfinite_batch_changes_no_state_and_is_flagged(microbatches):
  config = _vector_config()
  mesh = parallel.make_mesh(config)
  model = model_lib.MultiTower(config)
  tx = optim.make_optimizer(config)
  step = jax.jit(train.make_train_step(model, tx, losses.make_objective(config, mesh),
                                       optim.schedule(config), microbatches))
  state = jax.device_put(train.init_state_fn(model, tx, config)(jax.random.key(0)),
                         parallel.replicated(mesh))
  rng = np.random.default_rng(0)
  clean = {m: rng.normal(size=(32, 16)).astype(np.float32) for m in ("image", "text")}
  state, metrics = step(state, parallel.global_batch(mesh, clean))     # a normal step first
  assert not bool(metrics[guard.SKIPPED]) and int(state["step"]) == 1

  bad = {m: v.copy() for m, v in clean.items()}
  bad["image"][5, 3] = np.inf                   # one value of one row
  new, metrics = step(state, parallel.global_batch(mesh, bad))
  assert bool(metrics[guard.SKIPPED]) and not np.isfinite(float(metrics["loss"]))
  assert int(new["step"]) == 2                  # the counter moves on with the data
  for name in ("params", "opt_state"):          # moments and Adam's count included
    for a, b in zip(jax.tree.leaves(new[name]), jax.tree.leaves(state[name])):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

  again, metrics = step(new, parallel.global_batch(mesh, clean))       # and training goes on
  assert not bool(metrics[guard.SKIPPED])
  assert not np.array_equal(np.asarray(again["params"]["logit_scale"]),
                            np.asarray(new["params"]["logit_scale"]))


def test_skip_counter_logs_each_skipped_step_and_stops_at_the_limit():
  lines = []
  counter = guard.SkipCounter(3, total=1, log=lambda line, **_: lines.append(line))
  flags = [0, 1, 1, 0, 1, 1]
  for step, flag in enumerate(flags, 1):
    counter.record(step, {guard.SKIPPED: np.bool_(flag), "loss": np.float32(np.nan if flag else 1),
                          "grad_norm": np.float32(2.0)})
  counter.check()
  assert counter.total == 1 + sum(flags) and counter.run == 2
  assert [line.split("]")[0] for line in lines] == ["[step 2", "[step 3", "[step 5", "[step 6"]
  assert "non-finite loss (nan)" in lines[0] and "update skipped" in lines[0]
  assert counter.state() == {"total": 5, "run": 2}
  metrics = {guard.SKIPPED: np.bool_(True), "loss": np.float32(np.inf), "grad_norm": np.float32(0)}
  with pytest.raises(guard.NonFiniteError, match=r"step 7: 3 steps in a row .*Likely causes"):
    counter.record(7, metrics)                 # the third in a row
    counter.check()
