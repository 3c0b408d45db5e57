"""Embedding many examples: numpy inputs of any length -> numpy unit vectors, in fixed-size
batches split over the mesh (the last batch padded), one compiled function per modality."""

import functools

import jax
import numpy as np

from xmodal import parallel


class Embedder:
  """embed(params, modality, inputs [N, ...]) -> float32 [N, D], N any size."""

  def __init__(self, model, mesh, batch_size: int):
    self.model, self.mesh, self.batch_size = model, mesh, batch_size
    self._sharding = parallel.batch_sharding(mesh)
    self._fn = jax.jit(self._apply, static_argnums=1,
                       out_shardings=parallel.replicated(mesh))

  def _apply(self, params, modality, x):
    return self.model.apply({"params": params}, {modality: x})[modality]

  def __call__(self, params, modality: str, inputs) -> np.ndarray:
    inputs = np.asarray(inputs)
    n, b = len(inputs), self.batch_size
    out = []
    for start in range(0, n, b):
      chunk = inputs[start:start + b]
      real = len(chunk)
      if real < b:
        chunk = np.concatenate([chunk, np.zeros((b - real,) + chunk.shape[1:], chunk.dtype)])
      # Every process holds the same numpy rows; each device takes its slice of them.
      x = jax.make_array_from_callback(chunk.shape, self._sharding,
                                       functools.partial(_index, chunk))
      out.append(np.asarray(self._fn(params, modality, x))[:real])
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def _index(array, idx):
  return array[idx]
