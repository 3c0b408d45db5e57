"""Retrieval between towers, both directions: Recall@K and mean / median rank, exact at any
gallery size (the gallery is split over the devices: xmodal/evaluate/ranking.py).

With `captions="first"` row i of one tower matches row i of the other (one caption per
row). With `captions="all"` every usable caption of a row is embedded by the text tower
(COCO / Flickr30k: five per image): image -> text counts a hit when any of the image's
captions ranks within K, text -> image asks for each caption's own image. On data of tower-
ready records with labels, "<a>_to_<b>/class_top1" is the fraction of queries whose
nearest item of the other tower has their label.

Metrics: "<a>_to_<b>/R1" (R5, R10, ... by `ks`), ".../mean_rank", ".../median_rank"
(1-based), per pair of `pairs`, both ways; "examples", "skipped".
"""

from xmodal.fields import ConfigError, Field

FIELDS = dict(
    pairs=Field((), "('a:b', ...) tower pairs, scored both ways; empty = the loss pairs "
                "(config.loss.pairs, else every pair of towers)"),
    captions=Field("first", "'first': one caption per row (row i matches row i); 'all': every "
                   "caption of a row is a positive of its row (COCO / Flickr30k style)",
                   choices=("first", "all")),
    ks=Field((1, 5, 10), "Recall@K cut-offs", gt=0),
    query_block=Field(1024, "queries scored at a time; memory per device is query_block x "
                      "gallery / devices scores", gt=0),
)
SPLITS = ("eval",)


def pairs_of(config, task) -> list[tuple[str, str]]:
  from xmodal import config as config_lib  # noqa: PLC0415
  if task.pairs:
    return [tuple(p.split(":")) for p in task.pairs]
  return config_lib.loss_pairs(config)


def check_pairs(config, pairs, where: str) -> None:
  towers = list(config.towers.keys())
  for pair in pairs:
    parts = pair.split(":")
    if len(parts) != 2 or parts[0] == parts[1] or any(p not in towers for p in parts):
      raise ConfigError(f"config.{where}.pairs: {pair!r} must be 'a:b' with two different "
                        f"tower names from {towers}")


def check(config, task, where: str) -> None:
  check_pairs(config, task.pairs, where)
  towers = list(config.towers.keys())
  if task.captions == "all":
    texts = [m for m, t in config.towers.items() if t.kind == "text"]
    if len(texts) != 1 or not any(texts[0] in p for p in pairs_of(config, task)):
      raise ConfigError(f"config.{where}.captions: 'all' embeds every caption with the text "
                        f"tower: it needs one 'text' tower in the pairs (towers {towers})")


def run(ctx, task) -> dict:
  import numpy as np  # noqa: PLC0415
  from xmodal.evaluate import retrieval  # noqa: PLC0415
  pairs = pairs_of(ctx.config, task)
  many = task.captions == "all"
  text = next((m for m, t in ctx.config.towers.items() if t.kind == "text"), None)
  towers = {m for p in pairs for m in p} - ({text} if many else set())
  rows = ctx.embedded(task, "eval", towers, captions=many)
  ks, block = tuple(task.ks), task.query_block
  out = {}
  for a, b in pairs:
    if many and text in (a, b):
      image = b if a == text else a
      m, _ = retrieval.multi_caption(image, rows.z[image], text, rows.caption_z,
                                     rows.caption_row, ctx.mesh, ks, block)
    else:
      m, _ = retrieval.paired(a, rows.z[a], b, rows.z[b], ctx.mesh, ks, block)
    out.update(m)
    labels = rows.labels
    if not many and len(labels) and np.all(labels >= 0) and ctx.reader(task, "eval").ready:
      for q, g in ((a, b), (b, a)):
        nearest, found = retrieval.nearest(rows.z[q], rows.z[g])
        out[f"{q}_to_{g}/class_top1"] = float(np.mean(found & (labels[nearest] == labels)))
  out.update(rows.counts())
  return out


def score(metrics: dict) -> float | None:
  """The mean Recall@1 over every direction (DataComp's retrieval score)."""
  r1 = [v for k, v in metrics.items() if k.endswith("/R1")]
  return sum(r1) / len(r1) if r1 else None
