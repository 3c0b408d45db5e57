"""The training loop, top to bottom: config -> mesh -> model/optimizer/objective -> state
(restored if the workdir has a checkpoint) -> data -> jitted step -> log/eval/checkpoint.

`train(config, workdir)` returns the final evaluation metrics.
"""

import json
import logging
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from xmodal import checkpoint, config as config_lib, embed, evaluate, losses, metrics as metrics_lib
from xmodal import init as init_lib, microbatch, optim, parallel, sharding
from xmodal.data import pipeline
from xmodal.models import model as model_lib


def make_train_step(model, tx, objective, schedule, microbatches: int = 1, seed: int = 0):
  """state {params, opt_state, step, [loss]}, batch {modality: [B, ...], and the keys
  `objective.batch_keys()` names, e.g. "group": int32 [B]} -> (new state, metrics).

  The objective (losses.Objective) first does its work without gradient (group ids,
  frozen teachers' and EMA copies' embeddings, queues: `objective.prepare`), then its
  loss is differentiated; its state (state["loss"]: EMA copies, queues) moves on with
  the step. The towers run in train mode; their randomness (patch dropout) draws from the
  "dropout" rng, the run's seed folded with the step (so a resumed run draws the same
  masks). microbatches > 1: the same gradient, one micro-batch's activations at a time
  (`config.train.microbatches`, see microbatch.py)."""

  def train_step(state, batch):
    rng = jax.random.fold_in(jax.random.key(seed), state["step"])
    extras, loss_state = objective.prepare(model, state, batch, rng, microbatches)
    inputs = objective.inputs(batch)

    def loss_fn(params):
      embeddings = model.apply({"params": params}, inputs, train=True, rngs={"dropout": rng})
      return objective.loss(params, embeddings, extras)

    if microbatches > 1:
      grad_fn = microbatch.value_and_grad(model, objective.loss, microbatches)
      (loss, (per_pair, queued)), grads = grad_fn(state["params"], inputs, rng, extras)
    else:
      (loss, (per_pair, queued)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
          state["params"])
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    step_metrics = {"loss": loss, **per_pair, "grad_norm": optax.tree.norm(grads),
                    "lr": schedule(state["step"]), "scale": jnp.exp(params["logit_scale"]),
                    "temperature": jnp.exp(-params["logit_scale"])}
    if "logit_bias" in params:
      step_metrics["bias"] = params["logit_bias"]
    return {"params": params, "opt_state": opt_state, "step": state["step"] + 1,
            **objective.new_state(loss_state, queued)}, step_metrics

  return train_step


def init_state_fn(model, tx, config):
  loss_state = losses.state.LossState.from_config(config)

  def init_state(rng):
    params = model_lib.unbox(model.init(rng, model_lib.dummy_inputs(config))["params"])
    return {"params": params, "opt_state": tx.init(params), "step": jnp.zeros((), jnp.int32),
            **loss_state.init(params)}
  return init_state


# Sections a resumed run may change (longer training, eval or loader settings, the mesh).
RESUMABLE_CHANGES = ("train.", "eval.", "data.num_workers", "data.read_threads", "mesh.")
FIXED_CHANGES = ("train.frozen", "train.unfrozen")   # change the optimizer state's structure


def save_config(config, workdir: str) -> None:
  """Writes workdir/config.json; if the workdir already holds a run, first checks that the
  config is the same run (only RESUMABLE_CHANGES may differ)."""
  path = os.path.join(workdir, "config.json")
  if os.path.exists(path):
    with open(path) as f:
      saved = _flatten(json.load(f))
    now = _flatten(json.loads(config.to_json()))
    defaults = _schema_defaults(config)
    for key in sorted(set(saved) | set(now)):
      before = saved.get(key, defaults.get(key))   # keys added to the schema since: default
      if before != now.get(key) and (not key.startswith(RESUMABLE_CHANGES)
                                     or key.startswith(FIXED_CHANGES)):
        raise config_lib.ConfigError(
            f"config.{key}: the workdir {workdir} holds a run with {key}={before!r}, "
            f"but this config has {now.get(key)!r}; use another --workdir to start a new run")
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    with open(path, "w") as f:
      f.write(config.to_json(indent=2))


def _schema_defaults(config) -> dict:
  """{flat key: default value} for `config`'s schema: the default config's keys and, for
  every tower, its kind's defaults."""
  from xmodal import default_config
  tree = json.loads(default_config.get_config().to_json())
  tree["towers"] = {name: json.loads(default_config.tower_defaults(tower.kind).to_json())
                    for name, tower in config.towers.items()
                    if tower.get("kind") in default_config.tower_kinds()}
  return _flatten(tree)


def _flatten(tree, prefix=""):
  out = {}
  for k, v in tree.items():
    if isinstance(v, dict):
      out.update(_flatten(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out


def train(config, workdir: str) -> dict:
  """Trains (or resumes) the run in `workdir`; returns the final eval metrics."""
  config_lib.validate(config, jax.device_count())
  mesh = parallel.make_mesh(config)
  with sharding.context(config, mesh):
    return _train(config, workdir, mesh)


def _train(config, workdir: str, mesh) -> dict:
  # ---------------------------------------------------------------- setup
  model = model_lib.MultiTower(config)
  tx = optim.make_optimizer(config)
  schedule = optim.schedule(config)
  objective = losses.make_objective(config, mesh)
  save_config(config, workdir)
  writer = metrics_lib.MetricWriter(workdir)
  # Batch keys: one per tower that reads its own input, and what the loss reads (the
  # group ids when rows of one record are each other's positives, stored teachers).
  batch_keys = config_lib.batch_towers(config) + list(objective.batch_keys())
  batch_keys += [f"{config_lib.input_key(config, t)}:view" for t in objective.view_towers()]
  first_pair = config_lib.loss_pairs(config)[0]
  logging.info("mesh %s over %d devices, %d processes", dict(mesh.shape), jax.device_count(),
               jax.process_count())

  # ---------------------------------------------------------------- state
  init_state = init_state_fn(model, tx, config)
  abstract_state = jax.eval_shape(init_state, jax.random.key(config.seed))
  state_sharding = sharding.state_shardings(model, tx, config, mesh)
  abstract_state = jax.tree.map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract_state,
      state_sharding)
  num_params = sum(np.prod(a.shape) for a in jax.tree.leaves(abstract_state["params"]))

  # ---------------------------------------------------------------- restore or init
  ckpt = checkpoint.Checkpointer(workdir, config.train.keep_checkpoints)
  start = ckpt.latest_step()
  meta = ckpt.read_meta(start) if start is not None else None
  # The iterator's own saved state fits only the same processes and workers; on another
  # topology the data stream restarts at the same global position instead.
  same_topology = meta is not None and meta["process_count"] == jax.process_count() and (
      meta["num_workers"] == config.data.num_workers)
  stream = {"first_example": 0, "step": 0, "skipped": 0}   # where this data stream began
  if meta is not None:
    stream = meta["stream"] if same_topology else {
        "first_example": meta["examples_consumed"], "step": start, "skipped": meta["skipped"]}
  data_iter = iter(pipeline.train_dataset(config, jax.process_index(), jax.process_count(),
                                          stream["first_example"]))
  if meta is not None:
    state = ckpt.restore(start, abstract_state, data_iter if same_topology else None)
    print(f"resumed from {checkpoint.checkpoint_dir(workdir)}/{start}"
          + ("" if same_topology else
             f" (new topology: data from example {stream['first_example']})"), flush=True)
  else:
    start = 0
    state = jax.jit(init_state, out_shardings=state_sharding)(jax.random.key(config.seed))
    if config.init["from"]:
      state["params"] = init_lib.load_into(state["params"], config.init["from"],
                                           config.init.map)
      state["opt_state"] = jax.jit(tx.init, out_shardings=state_sharding["opt_state"])(
          state["params"])
      print(f"initialised from {config.init['from']}", flush=True)
  skipped_total = meta["skipped"] if meta is not None else 0      # over all processes
  eval_data = pipeline.eval_arrays(config)
  embedder = embed.Embedder(model, mesh, config.eval.batch_size)
  print(f"model: {num_params / 1e6:.2f}M params; towers {list(config.towers)}; "
        f"loss {' + '.join(f'{t.weight:g}*{t.objective}' for t in objective.terms)}/"
        f"{config.loss.impl}"
        f"{' (group positives)' if pipeline.GROUP_KEY in batch_keys else ''}; "
        f"global batch {config.batch_size}", flush=True)

  # ---------------------------------------------------------------- step
  batch_sharding = parallel.batch_sharding(mesh)
  step_fn = jax.jit(make_train_step(model, tx, objective, schedule,
                                    config.train.microbatches, config.seed),
                    in_shardings=(state_sharding, {k: batch_sharding for k in batch_keys}),
                    out_shardings=(state_sharding, parallel.replicated(mesh)),
                    donate_argnums=0)

  def run_eval(step):
    t0 = time.time()
    results, z = evaluate.run(config, embedder, state["params"], eval_data)
    results["eval/time_s"] = time.time() - t0
    writer.write(step, results, "eval: ")
    a, b = first_pair
    metrics_lib.plot_similarity(workdir, z[a], z[b], a, b, step)
    return results

  # ---------------------------------------------------------------- loop
  total = config.train.total_steps
  pending = []                      # per-step metrics (device arrays) since the last log
  skipped_local = 0                 # this process's bad rows since the last log/checkpoint
  epoch = 0                         # the newest epoch this process has read from
  interval_start, interval_steps = time.time(), 0
  for step in range(start, total):
    local = next(data_iter)
    skipped_local += int(local["skipped"].sum())
    epoch = max(epoch, int(local["epoch"].max()))
    batch = parallel.global_batch(mesh, {k: local[k] for k in batch_keys})
    state, step_metrics = step_fn(state, batch)
    pending.append(step_metrics)
    done = step + 1
    if step == start:               # the first call compiles: timed apart from the rest
      jax.block_until_ready(state)
      writer.write(done, {"compile_time_s": time.time() - interval_start}, "first step: ")
      interval_start, interval_steps = time.time(), 0
    else:
      interval_steps += 1

    log_now = done % config.train.log_every == 0 or done == total
    save_now = done % config.train.checkpoint_every == 0 or done == total
    if log_now or save_now:         # every process takes part in this sum
      skipped_total += parallel.sum_over_processes(skipped_local)
      skipped_local = 0
    if log_now:
      fetched = jax.device_get(pending)
      logged = {k: float(np.mean([m[k] for m in fetched])) for k in fetched[0]}
      step_time = (time.time() - interval_start) / max(interval_steps, 1)
      logged.update({"step_time_s": step_time, "steps_per_s": 1.0 / step_time,
                     "examples_per_s": config.batch_size / step_time,
                     "eta_s": step_time * (total - done), "data/skipped": skipped_total,
                     "data/epoch": epoch})
      writer.write(done, logged)
      pending, interval_start, interval_steps = [], time.time(), 0

    if config.train.eval_every and done % config.train.eval_every == 0 and done != total:
      interval_start += run_eval(done)["eval/time_s"]   # keep eval out of steps/s
    if save_now:
      consumed = (stream["first_example"] + (done - stream["step"]) * config.batch_size
                  + skipped_total - stream["skipped"])
      ckpt.save(done, state, data_iter, {
          "step": done, "skipped": skipped_total, "process_count": jax.process_count(),
          "num_workers": config.data.num_workers, "examples_consumed": consumed,
          "stream": stream}, force=True)

  # ---------------------------------------------------------------- finish
  ckpt.wait()
  final = run_eval(int(state["step"]))
  ckpt.close()
  metrics_lib.plot_loss_curve(workdir)
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "final_metrics.json"), "w") as f:
      json.dump({"step": int(state["step"]), **final}, f, indent=2)
  writer.close()
  return final
