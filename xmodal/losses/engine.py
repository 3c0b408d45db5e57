"""The objective engine: what an objective gives the drivers, and the two drivers that see
every column at once (`dense`, `gathered`; the third, `ring`, is in losses/ring.py).

An objective is a `Contrast`: a *score* of a block of rows against a block of columns and a
*target* for each score, in one of the two families (losses/families.py):

    score(theta, rf, cf, rm, cm) -> S [r, c]   or (S_row, S_col) when the two directions
                                               score differently (token-level scores)
    targets(theta, rm, cm) -> {"row": [Target], "col": [Target]}   softmax family
                              {"pair": w [r, c]}                    sigmoid family

Rows and columns are blocks {"feat": pytree, "meta": pytree} whose leaves have a leading
axis of block rows: "feat" are differentiable features (the embeddings, token features,
several modalities' rows), "meta" anything else that must travel with the rows (example
ids, reference or teacher embeddings, mixing partners and weights, a "valid" flag for
columns that hold nothing yet). theta is a dict of scalars: the learnable scale and bias
(differentiated through the score only) and constants the targets read (a teacher's scale,
a ramped mixing weight); targets are never differentiated.

The loss is w_row * mean over rows of the row direction (x -> y) + w_col * mean over
columns of the column direction (y -> x) for softmax; the sum of every pair's term divided
by the number of rows for sigmoid. Optional `extra` columns (a feature queue) join the
columns of the row direction only, without gradient.

Drivers, each equal to the others in value and gradient (tests/test_engine.py):
  dense     everything on one device, differentiated by JAX: the reference (here).
  gathered  losses/ring.py: each device all-gathers the columns and scores its rows
            against them tile by tile; memory: the gathered [B, D] blocks and one tile.
  ring      losses/ring.py: columns travel round the devices, tile by tile; flat memory.
"""

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
from jax import lax

from xmodal.losses import families

BATCH_AXES = ("data", "fsdp")


@dataclasses.dataclass(frozen=True)
class Contrast:
  """One contrastive computation over rows x columns (see the module docstring)."""
  family: str
  score: Callable
  targets: Callable
  directions: tuple = ("row", "col")          # softmax: which directions are summed
  weights: tuple = (0.5, 0.5)                 # softmax: weight of the row / column mean
  grad_cols: bool = True                      # False: columns are constants (a teacher's)

  def scores(self, theta, rf, cf, rm, cm):
    """(S_row, S_col), both [r, c]."""
    out = self.score(theta, rf, cf, rm, cm)
    return out if isinstance(out, tuple) else (out, out)

  def swap(self) -> "Contrast":
    """The same objective with rows and columns exchanged: its row direction is this one's
    column direction. Used to run each direction as a row-only pass (with a queue)."""
    def score(theta, rf, cf, rm, cm):
      s_row, s_col = self.scores(theta, cf, rf, cm, rm)
      return (s_col.T, s_row.T)

    def targets(theta, rm, cm):
      t = self.targets(theta, cm, rm)
      if self.family == families.SIGMOID:
        return {"pair": t["pair"].T}
      flip = lambda ts: [families.Target(x.alpha, None if x.w is None else x.w.T,  # noqa: E731
                                         None if x.logw is None else x.logw.T) for x in ts]
      return {"row": flip(t["col"]), "col": flip(t["row"])}

    dirs = tuple({"row": "col", "col": "row"}[d] for d in self.directions)
    return dataclasses.replace(self, score=score, targets=targets, directions=dirs,
                               weights=self.weights[::-1])


def rows_of(block) -> int:
  return jax.tree.leaves(block["feat"])[0].shape[0]


def with_valid(block):
  """The block with meta["valid"] (bool [n]) present: True unless given."""
  meta = dict(block["meta"])
  if "valid" not in meta:
    meta["valid"] = jnp.ones((rows_of(block),), bool)
  return {"feat": block["feat"], "meta": meta}


def concat(a, b):
  return jax.tree.map(lambda x, y: jnp.concatenate([x, y]), a, b)


def no_grad(block):
  return {"feat": lax.stop_gradient(block["feat"]), "meta": block["meta"]}


def block_sums(contrast: Contrast, theta, rows, cols, rows_all=None, cols_local=None,
               valid=None):
  """Unnormalised sums over one block, by JAX autodiff of the families' dense formulas:
  (row direction sum, column direction sum). rows against cols (`valid` [c]: which columns
  count, None = all); rows_all / cols_local: the column direction's rows and columns."""
  fam = contrast.family
  tconst = lax.stop_gradient(theta)
  mask = None if valid is None else valid[None, :]
  zero = jnp.zeros((), jnp.float32)
  if fam == families.SIGMOID:
    s = contrast.scores(theta, rows["feat"], cols["feat"], rows["meta"], cols["meta"])[0]
    w = lax.stop_gradient(contrast.targets(tconst, rows["meta"], cols["meta"])["pair"])
    return families.sigmoid_dense(s, w, mask), zero
  row_sum = col_sum = zero
  if "row" in contrast.directions:
    s = contrast.scores(theta, rows["feat"], cols["feat"], rows["meta"], cols["meta"])[0]
    t = lax.stop_gradient(contrast.targets(tconst, rows["meta"], cols["meta"])["row"])
    row_sum = jnp.sum(families.softmax_dense(s, t, 1, mask))
  if "col" in contrast.directions:
    s = contrast.scores(theta, rows_all["feat"], cols_local["feat"], rows_all["meta"],
                        cols_local["meta"])[1]
    t = lax.stop_gradient(contrast.targets(tconst, rows_all["meta"], cols_local["meta"])["col"])
    col_sum = jnp.sum(families.softmax_dense(s, t, 0))
  return row_sum, col_sum


def zero_cotangent(tree):
  """Zero cotangents for inputs that get no gradient (integers get float0)."""
  def zero(a):
    a = jnp.asarray(a)
    if jnp.issubdtype(a.dtype, jnp.floating) or jnp.issubdtype(a.dtype, jnp.complexfloating):
      return jnp.zeros_like(a)
    return jnp.zeros(a.shape, jax.dtypes.float0)
  return jax.tree.map(zero, tree)


def check_extra(contrast, extra):
  if extra is not None and (contrast.family == families.SOFTMAX
                            and "col" in contrast.directions):
    raise ValueError("extra columns (a queue) join the row direction only: run the column "
                     "direction as a swapped row-only pass (Contrast.swap)")


def _normalise(contrast, row_sum, col_sum, num_rows, num_cols):
  if contrast.family == families.SIGMOID:
    return row_sum / num_rows
  w_row, w_col = contrast.weights
  total = 0.0
  if "row" in contrast.directions:
    total = total + w_row * row_sum / num_rows
  if "col" in contrast.directions:
    total = total + w_col * col_sum / num_cols
  return total


def dense(contrast: Contrast, theta, rows, cols, extra=None):
  """The reference: every row against every column on one device -> scalar loss."""
  check_extra(contrast, extra)
  if not contrast.grad_cols:
    cols = no_grad(cols)
  everything, valid = cols, None
  if extra is not None:
    everything = concat(with_valid(cols), with_valid(no_grad(extra)))
    valid = everything["meta"]["valid"]
  row_sum, col_sum = block_sums(contrast, theta, rows, everything, rows, cols, valid)
  return _normalise(contrast, row_sum, col_sum, rows_of(rows), rows_of(cols))
