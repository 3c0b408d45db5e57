"""Cross-modal retrieval: Recall@K and mean / median rank of the best match, both directions,
exact at any gallery size (the gallery is split over the mesh: `ranking.ranks`).

Paired rows (row i of one modality matches row i of the other) or several captions per
image (COCO / Flickr: image -> text finds an image when any of its captions ranks within K;
text -> image asks for the caption's one image). Ties count against the query; a query
whose best positive score is not finite (a NaN or inf embedding) is a miss, and a gallery
item with one never outranks a finite match. Metric names are TensorBoard tags:
"<a>_to_<b>/R1", ".../R5", ".../R10", ".../mean_rank", ".../median_rank" (1-based ranks).
"""

import numpy as np

from xmodal.evaluate import ranking


def _named(rank, ks, num_gallery) -> dict:
  return {k.replace("@", ""): v
          for k, v in ranking.recall_metrics(rank, ks, num_gallery).items()}


def directed(queries, gallery, positives, mesh, ks=(1, 5, 10),
             query_block: int = 1024) -> tuple[dict, int]:
  """queries [Q, D], gallery [G, D], positives [Q, P] gallery indices (-1 = padding) ->
  ({"R1": .., "R5": .., "R10": .., "mean_rank": .., "median_rank": ..}, non-finite queries)."""
  rank, nonfinite = ranking.ranks(queries, gallery, positives, mesh, query_block)
  return _named(rank, ks, len(gallery)), nonfinite


def paired(a_name: str, a, b_name: str, b, mesh, ks=(1, 5, 10),
           query_block: int = 1024) -> tuple[dict, int]:
  """a, b [N, D], row i matching row i -> ({"<a>_to_<b>/R1": .., "<b>_to_<a>/R1": .., ...},
  non-finite queries over both directions)."""
  own = np.arange(len(a))[:, None]
  out, bad = {}, 0
  for qn, q, gn, g in ((a_name, a, b_name, b), (b_name, b, a_name, a)):
    m, n = directed(q, g, own, mesh, ks, query_block)
    out.update({f"{qn}_to_{gn}/{k}": v for k, v in m.items()})
    bad += n
  return out, bad


def multi_caption(image_name: str, images, text_name: str, captions, caption_row, mesh,
                  ks=(1, 5, 10), query_block: int = 1024) -> tuple[dict, int]:
  """images [N, D]; captions [M, D], caption_row [M] (the image of each caption) ->
  image -> text with every caption of an image a positive, and text -> image with each
  caption's image the positive; names as `paired`."""
  caption_row = np.asarray(caption_row)
  image_pos = ranking.positives_from_groups(np.arange(len(images)), caption_row)
  i2t, bad_i = directed(images, captions, image_pos, mesh, ks, query_block)
  t2i, bad_t = directed(captions, images, caption_row[:, None], mesh, ks, query_block)
  out = {f"{image_name}_to_{text_name}/{k}": v for k, v in i2t.items()}
  out.update({f"{text_name}_to_{image_name}/{k}": v for k, v in t2i.items()})
  return out, bad_i + bad_t


def scores(queries, gallery) -> np.ndarray:
  """queries [N, D], gallery [M, D] -> [N, M] dot products, -inf where not finite."""
  with np.errstate(invalid="ignore", over="ignore"):
    s = np.asarray(queries, np.float32) @ np.asarray(gallery, np.float32).T
  return np.where(np.isfinite(s), s, -np.inf)


def nearest(queries, gallery, block: int = 512) -> tuple[np.ndarray, np.ndarray]:
  """The most similar gallery row of each query, in blocks of queries ([block, M] scores at
  a time) -> (indices [N], found [N]: False where the best score is not finite)."""
  idx, found = [], []
  for start in range(0, len(queries), block):
    s = scores(queries[start:start + block], gallery)
    idx.append(np.argmax(s, axis=1))
    found.append(np.isfinite(s.max(axis=1)))
  if not idx:
    return np.zeros((0,), np.int64), np.zeros((0,), bool)
  return np.concatenate(idx), np.concatenate(found)
