"""Momentum distillation (ALBEF, TCL): soft targets from an EMA copy of the student.

Li et al. 2021, "Align before Fuse" (ALBEF); Yang et al. 2022, "Vision-Language
Pre-Training with Triple Contrastive Learning" (TCL). The train state keeps an exponential
moving average of the pair's towers (losses/state.py: ema <- m ema + (1 - m) params each
step, m = `momentum`, 0.995). Its embeddings x', y' of the batch give the teacher's scores
T = t x' @ y'.T (the student's scale t, no gradient), and each direction's target mixes the
teacher's softmax with the one-hot pair:

    q_i = alpha softmax(T_i.) + (1 - alpha) onehot_i,      alpha = 0.4
    L = 1/2 [ mean_i CE(q_i., softmax(S_i.)) + mean_j CE(q_.j, softmax(S_.j)) ]

with S = t x @ y.T the student's scores. `alpha` ramps linearly from 0 over `ramp_steps`
(ALBEF ramps over the first epoch), since the early EMA teacher knows nothing. With a
feature queue (loss.terms.<term>.queue, ALBEF: 65,536) each direction also scores the
queued EMA embeddings of earlier examples, which join the teacher's softmax too. Unlike
ALBEF the in-batch columns of the student's scores are the student's own embeddings (one
score tile serves both directions; ALBEF scores against the EMA's), so both towers get the
gradient of both directions.
"""

import jax.numpy as jnp

from xmodal.fields import Field
from xmodal.losses import engine, families, targets

FAMILY = families.SOFTMAX
INIT = (1 / 0.07, None)
FIELDS = dict(
    alpha=Field(0.4, "weight of the EMA teacher's softmax in the targets", ge=0, le=1),
    ramp_steps=Field(0, "alpha grows linearly from 0 over this many steps (ALBEF: one "
                     "epoch); 0 = from the start", ge=0),
    momentum=Field(0.995, "EMA decay m: ema <- m ema + (1 - m) params", ge=0, le=1),
)
EXAMPLE = dict(alpha=0.4)


def needs(opts, a, b):
  return {"ema": (a, b)}


def contrast(opts, pair=None) -> engine.Contrast:
  def score(theta, rf, cf, rm, cm):
    return theta["scale"] * targets.dot(rf, cf)

  def target(theta, rm, cm):
    teacher = theta["scale"] * targets.dot(rm["teacher"], cm["teacher"])
    one = targets.same_id(rm["ids"], cm["ids"])
    comps = [families.Target(theta["alpha"], logw=teacher),
             families.Target(1.0 - theta["alpha"], w=one)]
    return {"row": comps, "col": comps}

  return engine.Contrast(FAMILY, score, target)


def blocks(opts, ctx, a, b):
  ta, _ = targets.flatten_k(ctx.ema[a], ctx.ids)
  tb, _ = targets.flatten_k(ctx.ema[b], ctx.ids)
  rows, cols = targets.pair_blocks(ctx, a, b)
  rows["meta"]["teacher"], cols["meta"]["teacher"] = targets.stop(ta), targets.stop(tb)
  alpha = jnp.asarray(opts.alpha, jnp.float32)
  if opts.ramp_steps:
    alpha = alpha * jnp.minimum(1.0, (ctx.step + 1) / opts.ramp_steps)
  return rows, cols, {"alpha": alpha}


def enqueue(opts, block):
  """A queue keeps the EMA embeddings as its columns' features (ALBEF, MoCo)."""
  return {"feat": block["meta"]["teacher"].astype(block["feat"].dtype), "meta": block["meta"]}
