"""Distillation from a teacher's logits (open_clip's DistillClipLoss; MobileCLIP's ensembles).

Teachers run in the step as frozen towers, or their embeddings are stored with the data (an
ensemble of M teachers per example, MobileCLIP). The student's scores S = t x @ y.T (CLIP's learnable scale) are trained towards the
softmax of a teacher's logits T^k = s_k tx^k @ ty^k.T in both directions (ensemble member
k, its scale s_k; the embeddings unit-normalised):

    L = 1/2 [ mean_i CE(mean_k softmax(T^k_i.), softmax(S_i.)) +
              mean_j CE(mean_k softmax(T^k_.j), softmax(S_.j)) ]

With one member this is the distillation term of open_clip's `DistillClipLoss`
(`-(softmax(teacher) * log_softmax(student)).sum(1).mean()` per direction; the
contrastive term is a separate `softmax` term, e.g. loss.terms = clip + distill). With M
members it is MobileCLIP's (Vasu et al. 2024, "MobileCLIP: Fast Image-Text Models through
Multi-Modal Reinforced Training") ensemble averaged after the softmax: cross-entropy is
linear in the target, so it is the mean over members of each member's cross-entropy (their
KL up to the teachers' entropies, which do not depend on the student). In the ring each
member's softmax streams in one pass (running max, normaliser and teacher-weighted sum of
the student's scores per row and per column).

Options: `teacher`, 'TA:TB': the teacher's towers for the pair's a and b (frozen towers,
usually reading the student's inputs through towers.<t>.input), or with source='batch'
the batch keys holding stored teacher embeddings [B, D] or [B, M, D]; `teacher_scale`,
each member's scale (one value: every member's).
"""

import re

import jax.numpy as jnp
import numpy as np

from xmodal.fields import ConfigError, Field
from xmodal.losses import engine, families, targets

FAMILY = families.SOFTMAX
INIT = (1 / 0.07, None)
FIELDS = dict(
    teacher=Field("", "'TA:TB': the teacher's towers for the pair's a and b, or with "
                  "source='batch' the batch keys of stored teacher embeddings [B, (M,) D]"),
    source=Field("towers", "where the teacher's embeddings come from: 'towers' (frozen "
                 "towers run in the step) or 'batch' (stored with the data)",
                 choices=("towers", "batch")),
    teacher_scale=Field((100.0,), "each ensemble member's logit scale (1/temperature); one "
                        "value = every member's", gt=0),
)
EXAMPLE = dict(teacher="tx:ty", teacher_scale=(20.0,))


def _names(opts):
  return tuple(opts.teacher.split(":"))


def needs(opts, a, b):
  names = _names(opts) if opts.teacher else ()
  return {"towers": names} if opts.source == "towers" else {"batch": names}


def check(opts, config, where):
  names = _names(opts)
  if not opts.teacher or len(names) != 2 or not all(names):
    raise ConfigError(f"config.{where}teacher: required for the distill objective: 'TA:TB', "
                      f"the teacher's {'towers' if opts.source == 'towers' else 'batch keys'} "
                      f"for the pair's two towers")
  if opts.source == "towers":
    for t in names:
      if t not in config.towers:
        raise ConfigError(f"config.{where}teacher: {t!r} is not a tower "
                          f"({sorted(config.towers.keys())})")
      probe = f"{t}/head/kernel"
      frozen = any(re.fullmatch(p, probe) for p in config.train.frozen) and not any(
          re.fullmatch(p, probe) for p in config.train.unfrozen)
      if not frozen:
        raise ConfigError(f"config.train.frozen: the teacher tower {t!r} of {where[:-1]} must "
                          f"be frozen (e.g. train.frozen=('{t}/.*',)): it gets no gradient, "
                          f"and weight decay would still shrink it")
    return
  if config.data.source != "features":
    raise ConfigError(f"config.{where}source: 'batch' reads stored teacher embeddings, which "
                      f"the 'features' source carries (got data.source="
                      f"{config.data.source!r})")
  from xmodal.data import sources   # noqa: PLC0415
  paths = sources.expand_pattern(config.data.train_files)
  with np.load(paths[0]) as f:
    missing = [k for k in names if k not in f.files]
  if missing:
    raise ConfigError(f"config.{where}teacher: {missing} not in {paths[0]} (arrays: "
                      f"{sorted(f.files)})")


def _scales(opts, members):
  s = tuple(opts.teacher_scale)
  if len(s) not in (1, members):
    raise ValueError(f"loss term distill: teacher_scale has {len(s)} values for {members} "
                     f"ensemble members")
  return s * members if len(s) == 1 else s


def contrast(opts, pair=None) -> engine.Contrast:
  def score(theta, rf, cf, rm, cm):
    return theta["scale"] * targets.dot(rf, cf)

  def target(theta, rm, cm):
    tr, tc = rm["teacher"], cm["teacher"]                        # [r, M, D], [c, M, D]
    members = tr.shape[1]
    comps = [families.Target(1.0 / members,
                             logw=s * targets.dot(tr[:, k], tc[:, k]))
             for k, s in enumerate(_scales(opts, members))]
    return {"row": comps, "col": comps}

  return engine.Contrast(FAMILY, score, target)


def _teacher(opts, ctx, name, student):
  if opts.source == "towers":
    t, _ = targets.flatten_k(ctx.emb[name], ctx.ids)             # like the student's rows
    return targets.unit(t)[:, None]
  t = jnp.asarray(ctx.batch[name], jnp.float32)
  t = t[:, None] if t.ndim == 2 else t                            # [B, M, D]
  return targets.per_row(targets.unit(t), student)


def blocks(opts, ctx, a, b):
  ta, tb = _names(opts)
  rows, cols = targets.pair_blocks(ctx, a, b)
  rows["meta"]["teacher"] = targets.stop(_teacher(opts, ctx, ta, ctx.emb[a]))
  cols["meta"]["teacher"] = targets.stop(_teacher(opts, ctx, tb, ctx.emb[b]))
  return rows, cols, {}
