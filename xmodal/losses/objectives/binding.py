"""Anchor binding (ImageBind, LanguageBind) and all-pairs CLIP, with per-pair weights.

Girdhar et al. 2023, "ImageBind: One Embedding Space To Bind Them All"; Zhu et al. 2024,
"LanguageBind". Every modality m of the group is bound to one anchor modality a by CLIP's
symmetric InfoNCE (objectives/softmax.py, learnable scale init 1/0.07), each pair with its
weight w_m (default 1):

    L = sum_m w_m L_CLIP(a, m) / sum_m w_m

With `anchor` = '' every pair of the group's towers is a term (all-pairs). Each pair is a
driver call of CLIP's contrast (ring / gathered where CLIP runs), logged as
loss/<term>/<group>/<a>:<m>. With equal weights and all pairs it equals the summed
pairwise CLIP term over the same towers, divided by the number of pairs.
"""

from xmodal.fields import ConfigError, Field
from xmodal.losses import families, groups, targets
from xmodal.losses.objectives import softmax

FAMILY = families.SOFTMAX
GROUP = True
INIT = (1 / 0.07, None)
FIELDS = dict(
    anchor=Field("", "the anchor tower every other is bound to; '' = all pairs"),
    weights=Field((), "('tower=weight', ...) per-pair weights (by the non-anchor tower; "
                  "'a:b=weight' with all pairs); unnamed pairs weigh 1"),
    label_smoothing=Field(0.0, "CLIP's label smoothing", ge=0, lt=1),
)
EXAMPLE = dict(pairs=("x:y:z",), anchor="y", weights=("x=2", "z=0.5"))


def parse_weights(opts) -> dict:
  out = {}
  for item in opts.weights:
    key, sep, value = item.partition("=")
    try:
      out[key] = float(value)
    except ValueError:
      sep = ""
    if not sep or out[key] < 0:
      raise ConfigError(f"config.loss.terms.<term>.weights: {item!r} is not 'name=weight' "
                        f"with a weight >= 0")
  return out


def check(opts, config, where):
  if opts.anchor and opts.anchor not in config.towers:
    raise ConfigError(f"config.{where}anchor: {opts.anchor!r} is not a tower "
                      f"({sorted(config.towers.keys())})")
  try:
    parse_weights(opts)
  except ConfigError as e:
    raise ConfigError(str(e).replace("loss.terms.<term>.", where)) from None


def pairs_of(opts, towers) -> list:
  if opts.anchor:
    if opts.anchor not in towers:
      raise ValueError(f"binding: anchor {opts.anchor!r} is not in the group {towers}")
    return [(opts.anchor, t) for t in towers if t != opts.anchor]
  return [(a, b) for i, a in enumerate(towers) for b in towers[i + 1:]]


def contrast(opts, pair=None):
  return softmax.contrast(opts, pair)


def blocks(opts, ctx, *towers):
  weights = parse_weights(opts)
  pairs = pairs_of(opts, towers)
  w = [weights.get(b if opts.anchor else f"{a}:{b}", 1.0) for a, b in pairs]
  total = sum(w)
  if total <= 0:
    raise ValueError(f"binding: the pair weights {opts.weights} sum to 0")
  parts = []
  for (a, b), wp in zip(pairs, w):
    rows, cols = targets.pair_blocks(ctx, a, b)
    parts.append(groups.Part(rows, cols, weight=wp / total, label=f"{a}:{b}"))
  return groups.Parts(parts)


