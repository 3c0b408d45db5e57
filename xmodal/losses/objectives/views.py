"""Intra-modal InfoNCE between two augmented views of one tower's input (SLIP, TCL,
CleanCLIP), composed with the cross-modal terms in `loss.terms`.

Mu et al. 2022, "SLIP: Self-supervision meets Language-Image Pre-training" (SimCLR's
NT-Xent on two image views, tau 0.1); Yang et al. 2022, "Vision-Language Pre-Training with
Triple Contrastive Learning" (TCL's intra-modal term); Bansal et al. 2023, "CleanCLIP"
(per-modality self-supervised term). For a tower of the term's group with embeddings of its
two views u, v [B, D] (data.views: the batch carries '<tower>:view', embedded by the same
tower) and scale t (1/tau; init 1/0.1, SLIP's), every one of the 2B embeddings is scored
against the other 2B - 1, its positive being the other view of its example:

    L = 1/(2B) sum_r [ lse_(s != r) t z_r . z_s - t z_r . z_pos(r) ]   (NT-Xent)

averaged over the group's towers (one tower usually: pairs=("image",)). Run with
MV-InfoNCE's machinery (objectives/mv_infonce.py: with two views it is NT-Xent - log 2),
so every driver streams it. Use it with its own scale: `terms.section("views",
pairs=("image",), scale="own", weight=1.0)` beside a CLIP term.
"""

import dataclasses
import math

from xmodal.fields import ConfigError
from xmodal.losses import families, groups
from xmodal.losses.objectives import mv_infonce

FAMILY = families.SOFTMAX
GROUP = True
MIN_TOWERS = 1
VIEWS = True
INIT = (1 / 0.1, None)
FIELDS = {}
EXAMPLE = dict(pairs=("x",))


def check(opts, config, where):
  from xmodal.data import pipeline   # noqa: PLC0415
  if pipeline.ready_source(config, "train"):
    raise ConfigError(f"config.{where}objective: views needs an augmenting source (image "
                      f"records); data.source={config.data.source!r} is tower-ready")
  image_key = pipeline.modality_names(config)[0]
  for t in config.data.views:
    if t != image_key:
      raise ConfigError(f"config.data.views: {t!r}: only the image tower ({image_key!r}) "
                        f"has a second augmented view")
  if not config.data.views:
    raise ConfigError(f"config.{where}objective: views needs config.data.views, e.g. "
                      f"({image_key!r},)")


def contrast(opts, pair=None):
  return mv_infonce.contrast(opts, pair)


def blocks(opts, ctx, *towers):
  parts, locals_ = [], []
  for t in towers:
    key = f"{t}:view"
    if key not in ctx.emb:
      raise ValueError(f"views: no embeddings of {key!r}: set config.data.views to "
                       f"include {t!r}")
    only = dataclasses.replace(ctx, emb={t: ctx.emb[t], key: ctx.emb[key]})
    pair = mv_infonce.blocks(opts, only, t, key)
    parts += [groups.Part(p.rows, p.cols, weight=1.0 / len(towers), label=t)
              for p in pair.parts]
    locals_.append(pair.local)

  def local(theta):
    return sum(f(theta) for f in locals_) / len(towers) + math.log(2.0)

  return groups.Parts(parts, local)

