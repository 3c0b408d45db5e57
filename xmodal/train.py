"""The training loop, top to bottom: config -> mesh -> model/optimizer/objective -> state
(restored if the workdir has a checkpoint) -> data -> jitted step -> log/eval/checkpoint.

`train(config, workdir)` returns the final evaluation metrics.
"""

import json
import logging
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax

from xmodal import checkpoint, config as config_lib, evaluate, losses, metrics as metrics_lib
from xmodal import guard, init as init_lib, interrupt, microbatch, optim, parallel, prefetch
from xmodal import progress, sharding, towers
from xmodal.data import bad as bad_lib, pipeline
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
    grad_norm = optax.tree.norm(grads)

    def update(state):
      updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
      return {**state, "params": optax.apply_updates(state["params"], updates),
              "opt_state": opt_state, **objective.new_state(loss_state, queued)}

    # The whole state transition (parameters, optimizer, the loss's EMA copies and queues)
    # is skipped, every leaf kept, when the loss or the gradient is not finite (guard.py).
    # The step counter advances either way, with the data.
    ok = guard.is_finite(loss, grad_norm)
    new_state = guard.update_if(ok, update, state)
    new_state["step"] = state["step"] + 1
    used = state["params"]            # the scale and bias this step's loss was computed with
    step_metrics = {"loss": loss, **per_pair, "grad_norm": grad_norm,
                    "lr": schedule(state["step"]), "scale": jnp.exp(used["logit_scale"]),
                    "temperature": jnp.exp(-used["logit_scale"]),
                    guard.SKIPPED: jnp.logical_not(ok)}
    if "logit_bias" in used:
      step_metrics["bias"] = used["logit_bias"]
    return new_state, step_metrics

  return train_step


def jit_train_step(config, mesh, model, tx, objective, schedule, state_sharding, batch_keys):
  """The train step jitted as `train` runs it (tools/bench_step.py times this very step):
  state sharded by `state_sharding` and donated, the batch's `batch_keys` split over the
  batch axes, metrics replicated."""
  batch_sharding = parallel.batch_sharding(mesh)
  return jax.jit(make_train_step(model, tx, objective, schedule, config.train.microbatches,
                                 config.seed),
                 in_shardings=(state_sharding, {k: batch_sharding for k in batch_keys}),
                 out_shardings=(state_sharding, parallel.replicated(mesh)), donate_argnums=0)


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
  check_config(config, workdir)
  write_config(config, workdir)


def write_config(config, workdir: str) -> None:
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json(indent=2))


def check_config(config, workdir: str) -> None:
  """Raises ConfigError if the workdir holds a run that `config` is not (only
  RESUMABLE_CHANGES may differ). Reads only."""
  path = os.path.join(workdir, "config.json")
  if os.path.exists(path):
    with open(path) as f:
      saved = _flatten(config_lib.upgrade(json.load(f)))   # keys renamed since: new names
    now = _flatten(json.loads(config.to_json()))
    defaults = _schema_defaults(config)
    for key in sorted(set(saved) | set(now)):
      before = saved.get(key, defaults.get(key))   # keys added to the schema since: default
      if before != now.get(key) and (not key.startswith(RESUMABLE_CHANGES)
                                     or key.startswith(FIXED_CHANGES)):
        raise config_lib.ConfigError(
            f"config.{key}: the workdir {workdir} holds a run with {key}={before!r}, "
            f"but this config has {now.get(key)!r}; use another --workdir to start a new run")


def _schema_defaults(config) -> dict:
  """{flat key: default value} for `config`'s schema: the default config's keys and, for
  every tower, its kind's defaults."""
  from xmodal import default_config
  tree = json.loads(default_config.get_config().to_json())
  tree["towers"] = {name: json.loads(default_config.tower_defaults(tower.kind).to_json())
                    for name, tower in config.towers.items()
                    if towers.known(tower.get("kind"))}
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
  config_lib.upgrade(config)
  init_lib.resolve(config)          # what the weights of init.source fix (max_scale, ...)
  config_lib.validate(config, jax.device_count())
  mesh = parallel.make_mesh(config)
  with sharding.context(config, mesh), interrupt.StopOnSignal() as signals:
    return _train(config, workdir, mesh, signals)


def _train(config, workdir: str, mesh, signals) -> dict:
  # ---------------------------------------------------------------- setup
  model = model_lib.MultiTower(config)
  tx = optim.make_optimizer(config)
  schedule = optim.schedule(config)
  objective = losses.make_objective(config, mesh)
  # Nothing is written to the workdir before the first step has run (config.json after
  # it, the writer and checkpointer on first use): a start that fails leaves it as it was.
  check_config(config, workdir)
  writer = metrics_lib.MetricWriter(workdir)
  # Batch keys: one per tower that reads its own input, and what the loss reads (the
  # group ids when rows of one record are each other's positives, stored teachers).
  batch_keys = config_lib.batch_towers(config) + list(objective.batch_keys())
  batch_keys += [f"{config_lib.input_key(config, t)}:view" for t in objective.view_towers()]
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

  def open_stream(first_example=0):   # batches on the device before the step asks for them
    return iter(prefetch.to_device(
        pipeline.train_dataset(config, jax.process_index(), jax.process_count(), first_example),
        prefetch.device_batch(mesh, batch_keys)))

  def resume(step):                 # raises if the checkpoint is damaged
    meta = ckpt.read_meta(step)
    # The iterator's own saved state fits only the same processes and workers; on another
    # topology the data stream restarts at the same global position instead.
    same_topology = meta["process_count"] == jax.process_count() and (
        meta["num_workers"] == config.data.num_workers)
    stream = meta["stream"] if same_topology else {
        "first_example": meta["examples_consumed"], "step": step, "skipped": meta["skipped"]}
    data_iter = open_stream(stream["first_example"])
    state = ckpt.restore(step, abstract_state, data_iter if same_topology else None)
    return meta, stream, data_iter, state, same_topology

  start, resumed = ckpt.restore_newest(resume)
  meta = None
  if resumed is not None:
    meta, stream, data_iter, state, same_topology = resumed
    print(f"resumed from {checkpoint.checkpoint_dir(workdir)}/{start}"
          + ("" if same_topology else
             f" (new topology: data from example {stream['first_example']})"), flush=True)
  else:
    start = 0
    stream = {"first_example": 0, "step": 0, "skipped": 0}   # where this data stream began
    data_iter = open_stream()
    state = jax.jit(init_state, out_shardings=state_sharding)(jax.random.key(config.seed))
    loaded = []
    if config.init.source:
      state["params"], loaded = init_lib.load_into(state["params"], config.init.source,
                                                   config.init.map)
      state["opt_state"] = jax.jit(tx.init, out_shardings=state_sharding["opt_state"])(
          state["params"])
      print(f"initialised from {config.init.source}", flush=True)
    init_lib.check_frozen(config, state["params"], loaded)
  skipped_total = meta["skipped"] if meta is not None else 0      # over all processes
  # ... and by reason (data/skipped/<reason>); checkpoints from before reasons start at 0.
  by_reason_total = np.asarray((meta or {}).get("skipped_by_reason", [0] * len(
      bad_lib.REASONS)), np.int64)
  evaluation = evaluate.Evaluation(config, model, mesh)     # the tasks of config.eval.tasks
  print(f"model: {num_params / 1e6:.2f}M params; towers {list(config.towers)}; "
        f"loss {' + '.join(f'{t.weight:g}*{t.objective}' for t in objective.terms)}/"
        f"{config.loss.impl}"
        f"{' (group positives)' if pipeline.GROUP_KEY in batch_keys else ''}; "
        f"global batch {config.batch_size}", flush=True)

  # ---------------------------------------------------------------- step
  step_fn = jit_train_step(config, mesh, model, tx, objective, schedule, state_sharding,
                           batch_keys)

  def run_eval(step, final=False):  # the tasks due at `step` (every task when final)
    results = evaluation.run_due(step, state["params"], final)
    if results is not None:
      writer.write(step, results, "eval: ")
      evaluation.plot_similarity(workdir, step)
    return results

  # ---------------------------------------------------------------- loop
  total = config.train.total_steps
  pending = []                      # per-step metrics (device arrays) since the last log
  skipped_local = 0                 # this process's bad rows since the last log/checkpoint
  by_reason_local = np.zeros(len(bad_lib.REASONS), np.int64)      # ... by reason
  epoch = 0                         # the newest epoch this process has read from
  clock = progress.Clock(start, total, config.batch_size, bar=jax.process_index() == 0)
  nonfinite = guard.SkipCounter(config.train.max_nonfinite_steps, config=config,
                                before_stop=ckpt.wait, **(meta or {}).get("nonfinite", {}))

  def sum_skipped():                # a collective: every process calls it at the same steps
    nonlocal skipped_total, by_reason_total, skipped_local, by_reason_local
    summed = parallel.sum_over_processes(np.concatenate([[skipped_local], by_reason_local]))
    skipped_total += int(summed[0])
    by_reason_total = by_reason_total + summed[1:]
    skipped_local, by_reason_local = 0, np.zeros_like(by_reason_local)

  def save(done):
    nonfinite.check()
    consumed = (stream["first_example"] + (done - stream["step"]) * config.batch_size
                + skipped_total - stream["skipped"])
    ckpt.save(done, state, data_iter, {
        "step": done, "skipped": skipped_total,
        "skipped_by_reason": [int(c) for c in by_reason_total],
        "process_count": jax.process_count(), "num_workers": config.data.num_workers,
        "examples_consumed": consumed, "stream": stream, "nonfinite": nonfinite.state()},
        force=True)

  for step in range(start, total):
    local = clock.next(data_iter)
    skipped_local += int(local["skipped"].sum())
    by_reason_local = by_reason_local + local[pipeline.SKIPPED_REASONS_KEY].sum(0)
    epoch = max(epoch, int(local["epoch"].max()))
    batch = {k: local[k] for k in batch_keys}
    state, step_metrics = step_fn(state, batch)
    done = step + 1
    nonfinite.record(done, step_metrics)
    pending.append(step_metrics)
    if step == start:               # the first call compiles: timed apart from the rest
      jax.block_until_ready(state)
      write_config(config, workdir)  # the run exists from here on (checked at setup)
      writer.write(done, {"compile_time_s": clock.first_step_done()}, "first step: ")
    else:
      clock.step_done()

    log_now = done % config.train.log_every == 0 or done == total
    save_now = done % config.train.checkpoint_every == 0 or done == total
    if log_now or save_now:         # every process takes part in this sum
      sum_skipped()
      nonfinite.check()
    if log_now:
      fetched = jax.device_get(pending)
      logged = {k: float(np.mean([m[k] for m in fetched])) for k in fetched[0]}
      logged.update(clock.interval(done, logged["loss"]))
      logged.update({"data/skipped": skipped_total, **bad_lib.named(by_reason_total),
                     "data/epoch": epoch, "train/skipped_steps": nonfinite.total})
      writer.write(done, logged)
      pending = []

    if done != total and (results := run_eval(done)) is not None:
      clock.exclude(results["eval/time_s"])   # keep eval out of steps/s
    if save_now:
      save(done)
    if signals.stop_now(sync_point=log_now or save_now):   # SIGINT / SIGTERM: save, stop
      if not save_now:
        sum_skipped()
        save(done)
      ckpt.wait()
      data_iter.close()
      raise interrupt.Interrupted(signals.signum, done, os.path.join(ckpt.directory, str(done)))

  # ---------------------------------------------------------------- finish
  data_iter.close()                 # stops the prefetch threads
  clock.close()
  ckpt.wait()
  final = run_eval(int(state["step"]), final=True)
  ckpt.close()
  metrics_lib.plot_loss_curve(workdir)
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "final_metrics.json"), "w") as f:
      json.dump({"step": int(state["step"]), **final}, f, indent=2)
  writer.close()
  return final
