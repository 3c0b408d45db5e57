"""State some objectives keep between steps, in the train state under "loss":

  ema    {term: {tower: params}}: an exponential moving average of towers (momentum
         distillation, ALBEF/TCL). Each step first moves it towards the current params,
         ema <- m * ema + (1 - m) * params (ALBEF's order: the teacher of step t has seen
         the params of step t), then embeds the batch with it, without gradient.
  queue  {term: {"ptr": int32, "a:b": {"ab": columns, "ba": columns}}}: the columns of the
         last `queue` examples of each direction (MoCo/ALBEF), extra negatives of the
         next steps. Kept as each device's own FIFO of its rows (the [Q, ...] arrays are
         split over the batch axes like a batch, and device d writes its b new rows into
         its own Q/n rows), so enqueueing moves no data between devices; entries not yet
         written have meta["valid"] False and are left out of every normaliser.

Both are plain pytrees of the train state: checkpointed with it, restored exactly on
resume, sharded like the params (EMA) or like a batch (queue), untouched by the optimizer.
"""

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P

from xmodal.losses import engine, targets

QUEUE_AXES = engine.BATCH_AXES


def embedding_shape(config, tower: str) -> tuple:
  """The shape of one example's embedding of `tower` in the train step: (D,), or (K, D)
  when the batch holds K inputs per example for it (data.captions='k')."""
  d = config.model.embed_dim
  k = config.data.get("num_captions", 1)
  if config.data.get("captions") == "k" and config.towers[tower].kind == "text":
    return (k, d)
  return (d,)


class LossState:
  """The loss's part of the train state (see the module docstring)."""

  @classmethod
  def from_config(cls, config, shards: int = 1) -> "LossState":
    from xmodal.losses import terms   # noqa: PLC0415
    return cls(config, terms.resolve(config), shards)

  def __init__(self, config, terms, shards: int):
    self.config, self.terms, self.shards = config, terms, shards
    self.ema = {t.name: tuple(sorted({x for p in t.pairs for x in t.needs(*p)["ema"]}))
                for t in terms}
    self.ema = {k: v for k, v in self.ema.items() if v}
    self.queued = [t for t in terms if t.queue]

  def __bool__(self):
    return bool(self.ema or self.queued)

  # ------------------------------------------------------------------ init and shardings
  def init(self, params) -> dict:
    """The loss's part of a fresh train state: {} or {"loss": {...}}."""
    if not self:
      return {}
    out = {}
    if self.ema:
      out["ema"] = {term: {t: params[t] for t in towers} for term, towers in self.ema.items()}
    if self.queued:
      out["queue"] = {t.name: self._empty_queue(t) for t in self.queued}
    return {"loss": out}

  def _empty_queue(self, term):
    from xmodal.losses import Context   # noqa: PLC0415 (the package imports this module)
    b = self.config.batch_size
    towers = {x for a, b_ in term.pairs for x in (a, b_) + term.needs(a, b_)["towers"]}
    emb = {t: jax.ShapeDtypeStruct((b,) + embedding_shape(self.config, t), jnp.float32)
           for t in towers}
    ema = {t: jax.ShapeDtypeStruct((b,) + embedding_shape(self.config, t), jnp.float32)
           for a, b_ in term.pairs for t in term.needs(a, b_)["ema"]}
    out = {"ptr": jnp.zeros((), jnp.int32)}
    for a, b_ in term.pairs:
      def entries(emb, ema):
        ctx = Context(emb=emb, ids=jnp.zeros((b,), jnp.int32), batch={}, ema=ema,
                      rng=jax.random.key(0), step=jnp.zeros((), jnp.int32), shards=self.shards)
        rows, cols, _ = term.module.blocks(term.opts, ctx, a, b_)
        return self.entries(term, rows, cols)
      shapes = jax.eval_shape(entries, emb, ema)
      factor = term.queue // b
      out[f"{a}:{b_}"] = jax.tree.map(
          lambda s: jnp.zeros((s.shape[0] * factor,) + s.shape[1:], s.dtype), shapes)
    return out

  def shardings(self, params_shardings, mesh) -> dict:
    """Shardings of `init`'s tree: EMA like the params, queues like a batch."""
    if not self:
      return {}
    out = {}
    replicated = NamedSharding(mesh, P())
    batch = NamedSharding(mesh, P(tuple(a for a in QUEUE_AXES if a in mesh.axis_names)))
    if self.ema:
      out["ema"] = {term: {t: params_shardings[t] for t in towers}
                    for term, towers in self.ema.items()}
    if self.queued:
      out["queue"] = {}
      for t in self.queued:
        q = jax.eval_shape(lambda t=t: self._empty_queue(t))
        out["queue"][t.name] = jax.tree.map(lambda s: batch if s.ndim else replicated, q)
    return {"loss": out}

  # ------------------------------------------------------------------ each step
  def entries(self, term, rows, cols) -> dict:
    """What the queues keep of this step's blocks: {"ab": the columns of pass a->b (tower
    b's block), "ba": those of pass b->a (tower a's block)}, without gradient, ids NO_ID."""
    enqueue = getattr(term.module, "enqueue", lambda opts, block: block)

    def keep(block):
      block = targets.stop(engine.with_valid(enqueue(term.opts, block)))
      meta = dict(block["meta"])
      meta["ids"] = jnp.full_like(meta["ids"], targets.NO_ID)
      return {"feat": block["feat"], "meta": meta}
    return {"ab": keep(cols), "ba": keep(rows)}

  def prepare(self, loss_state, params, momenta: dict):
    """The state this step reads: the EMA moved towards `params` (momenta: {term: m})."""
    if not self:
      return None
    out = dict(loss_state)
    if self.ema:
      out["ema"] = {term: jax.tree.map(lambda e, p, m=momenta[term]: m * e + (1 - m) * p,
                                       trees, {t: params[t] for t in trees})
                    for term, trees in loss_state["ema"].items()}
    return out

  def advance(self, prepared, updates) -> dict:
    """The next state: the prepared EMA, and each queue with this step's entries written
    at its pointer (per device: see the module docstring)."""
    if prepared is None:
      return {}
    out = dict(prepared)
    if self.queued:
      out["queue"] = {}
      for term in self.queued:
        q = prepared["queue"][term.name]
        step_rows = self.config.batch_size
        new = {"ptr": (q["ptr"] + step_rows) % term.queue}
        for pair, dirs in updates[term.name].items():
          new[pair] = {d: jax.tree.map(lambda old, e: self._write(old, e, q["ptr"], term.queue),
                                       q[pair][d], dirs[d]) for d in dirs}
        out["queue"][term.name] = new
    return {"loss": out}

  def _write(self, queue, entries, ptr, size):
    """queue [Q*f, ...] <- entries [B*f, ...] (f rows per example) at example `ptr`, each
    device into its own rows."""
    n = self.shards
    f = entries.shape[0] // self.config.batch_size
    qv = queue.reshape((n, queue.shape[0] // n) + queue.shape[1:])
    ev = entries.reshape((n, entries.shape[0] // n) + entries.shape[1:])
    start = (ptr // n) * f
    qv = jax.lax.dynamic_update_slice_in_dim(qv, ev.astype(qv.dtype), start, axis=1)
    del size
    return qv.reshape(queue.shape)
