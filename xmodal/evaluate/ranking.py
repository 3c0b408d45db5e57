"""Exact retrieval ranks at any gallery size: the gallery is split over the devices of a
mesh and never scored whole on one device.

For query i with positives P(i) (gallery indices; several for COCO-style image->text, where
an image has five captions), the rank is the number of *other* gallery items that score at
least as high as its best positive:

    t_i    = max_{p in P(i)} q_i . g_p
    rank_i = #{ j not in P(i) : q_i . g_j >= t_i }          (0 = the best positive is first)

Ties count against the query, so a gallery of duplicates cannot all be "found" at rank 0.
Scores that are not finite (NaN/inf embeddings of a diverged model) count as -inf: such a
gallery item never outranks a finite match, and a query whose best positive score is not
finite is a miss: its rank is inf (never within any K, whatever the gallery size), and it
is counted in `nonfinite`.

Memory: the gallery rows of one device [G/n, D] and one [q_block, G/n] score tile per
device; the best positive score is a max and the rank a count, each reduced over the
devices (`pmax`, `psum`), so there is no top-k and nothing [Q, G] anywhere. The score tile
is computed once per query block and used for both reductions.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import NamedSharding, PartitionSpec as P

BATCH_AXES = ("data", "fsdp")


def positives_from_groups(query_group, gallery_group) -> np.ndarray:
  """Positives by shared id: query_group [Q], gallery_group [G] ints -> [Q, P] gallery
  indices of equal id, padded with -1 (P = the largest group)."""
  query_group, gallery_group = np.asarray(query_group), np.asarray(gallery_group)
  by_id: dict = {}
  for j, g in enumerate(gallery_group.tolist()):
    by_id.setdefault(g, []).append(j)
  width = max((len(v) for v in by_id.values()), default=1)
  out = np.full((len(query_group), width), -1, np.int32)
  for i, g in enumerate(query_group.tolist()):
    hits = by_id.get(g, [])
    out[i, :len(hits)] = hits
  return out


def dense_ranks(queries, gallery, positives) -> np.ndarray:
  """The reference: the whole [Q, G] score matrix in numpy. -> float64 ranks [Q] (whole
  numbers; inf = a miss)."""
  queries, gallery = np.asarray(queries, np.float32), np.asarray(gallery, np.float32)
  positives = np.asarray(positives)
  with np.errstate(invalid="ignore", over="ignore"):
    scores = queries @ gallery.T
  scores = np.where(np.isfinite(scores), scores, -np.inf)   # a diverged item never outranks
  ranks = np.empty(len(queries), np.float64)
  for i, row in enumerate(scores):
    pos = positives[i][positives[i] >= 0]
    best = row[pos].max() if len(pos) else np.nan
    if not np.isfinite(best):
      ranks[i] = np.inf
      continue
    others = np.delete(row, pos)
    ranks[i] = int(np.sum(others >= best))
  return ranks


@functools.lru_cache(maxsize=8)
def _ranker(mesh, shard_rows: int, num_gallery: int):
  axes = tuple(a for a in BATCH_AXES if a in mesh.axis_names)

  def per_device(q, g, pos):
    # q [qb, D] and pos [qb, P] replicated; g [G/n, D] this device's gallery rows, the
    # last device's padded past num_gallery.
    offset = lax.axis_index(axes) * shard_rows
    s = jnp.matmul(q, g.T, preferred_element_type=jnp.float32)               # [qb, G/n]
    s = jnp.where(jnp.isfinite(s), s, -jnp.inf)     # a diverged item never outranks
    rows = jnp.broadcast_to(jnp.arange(q.shape[0])[:, None], pos.shape)
    local = pos - offset          # negative indices would wrap around: move them off the end
    cols = jnp.where((pos >= 0) & (local >= 0) & (local < shard_rows), local, shard_rows)
    is_pos = jnp.zeros(s.shape, bool).at[rows, cols].set(True, mode="drop")
    real = (offset + jnp.arange(shard_rows)) < num_gallery                  # [G/n]
    best = lax.pmax(jnp.max(jnp.where(is_pos, s, -jnp.inf), axis=1), axes)  # [qb]
    ahead = jnp.sum((s >= best[:, None]) & ~is_pos & real[None, :], axis=1)
    return lax.psum(ahead, axes), best

  fn = jax.shard_map(per_device, mesh=mesh, in_specs=(P(), P(axes), P()),
                     out_specs=(P(), P()), check_vma=False)
  return jax.jit(fn)


def ranks(queries, gallery, positives, mesh, query_block: int = 1024) -> tuple[np.ndarray, int]:
  """queries [Q, D], gallery [G, D] (numpy or jax; unit vectors for cosine), positives
  [Q, P] gallery indices padded with -1 -> (float64 ranks [Q]: whole numbers, inf for a
  query whose best positive score is not finite; the number of such queries).
  Equal to `dense_ranks`; the gallery is split over the mesh's batch axes."""
  axes = tuple(a for a in BATCH_AXES if a in mesh.axis_names)
  n = math.prod(mesh.shape[a] for a in axes)
  queries = np.asarray(queries, np.float32)
  gallery = np.asarray(gallery, np.float32)
  positives = np.asarray(positives, np.int32)
  num_gallery = len(gallery)
  shard_rows = -(-num_gallery // n)
  padded = np.zeros((shard_rows * n, gallery.shape[1]), np.float32)   # masked on device
  padded[:num_gallery] = gallery
  # Every process holds the same numpy gallery; each device takes its rows (also across
  # processes, where device_put of host data onto other hosts' devices is refused).
  g = jax.make_array_from_callback(padded.shape, NamedSharding(mesh, P(axes)),
                                  lambda idx: padded[idx])
  block = min(query_block, max(len(queries), 1))
  fn = _ranker(mesh, shard_rows, num_gallery)
  out, nonfinite = [], 0
  for start in range(0, len(queries), block):
    q = queries[start:start + block]
    pos = positives[start:start + block]
    real = len(q)
    if real < block:
      q = np.concatenate([q, np.zeros((block - real, q.shape[1]), np.float32)])
      pos = np.concatenate([pos, np.full((block - real, pos.shape[1]), -1, np.int32)])
    ahead, best = fn(q, g, pos)
    ahead, best = np.asarray(ahead)[:real], np.asarray(best)[:real]
    bad = ~np.isfinite(best)
    nonfinite += int(bad.sum())
    out.append(np.where(bad, np.inf, ahead.astype(np.float64)))
  return (np.concatenate(out) if out else np.zeros((0,), np.float64)), nonfinite


def recall_metrics(rank: np.ndarray, ks=(1, 5, 10), num_gallery: int | None = None) -> dict:
  """ranks [Q] (0-based; inf = a miss) -> {"R@1": .., "R@5": .., ..., "mean_rank",
  "median_rank"} (ranks reported 1-based, as papers do). A miss is never within K; in the
  mean and median it ranks past the end (num_gallery + 1) when the gallery size is given,
  else it makes them inf."""
  out = {f"R@{k}": float(np.mean(rank < k)) for k in ks}
  if num_gallery is not None:
    rank = np.where(np.isfinite(rank), rank, num_gallery)
  out["mean_rank"] = float(np.mean(rank + 1))
  out["median_rank"] = float(np.median(rank + 1))
  return out
