"""Batches reach the device before the train step asks for them.

`to_device(ds, put)` wraps the input pipeline (a grain `IterDataset` of host batches) in two
background stages, each grain's `ThreadPrefetchIterDataset`:

  host    a thread pulls host batches `host_buffer` ahead (the last `.batch()` stacking and,
          with `data.num_workers=0`, the decoding happen there, off the loop's thread);
  device  a second thread applies `put` (host rows -> global device arrays) `device_buffer`
          ahead, so the transfer of batch i+1 runs while step i runs.

The train loop then only takes ready device arrays: its thread dispatches steps back to back,
and evaluation or a checkpoint stalls training no longer than it takes (the stages keep
filling meanwhile). The iterator's checkpoint state is the position of the last batch
handed out (grain records the state with each prefetched element), in the same format as
the wrapped pipeline's own state: batches still in the buffers are read again after a
resume, and checkpoints written without prefetching restore into it.
"""

import grain

from xmodal import parallel


def to_device(ds: grain.IterDataset, put, host_buffer: int = 2,
              device_buffer: int = 2) -> grain.IterDataset:
  """ds: host batches; put: host batch -> device batch. Returns the device batches, in order,
  prefetched `host_buffer` + `device_buffer` ahead; checkpointable like `ds`."""
  ds = grain.experimental.ThreadPrefetchIterDataset(ds, prefetch_buffer_size=host_buffer)
  ds = ds.map(put)
  return grain.experimental.ThreadPrefetchIterDataset(ds, prefetch_buffer_size=device_buffer)


def device_batch(mesh, keys):
  """A `put` for `to_device`: {key: numpy [b_local, ...]} -> the same dict with `keys` as
  global jax arrays [B, ...] split over the batch axes (parallel.global_batch); the other
  entries (skipped-row counts, epochs) stay numpy, for the loop's host-side bookkeeping."""
  keys = tuple(keys)

  def put(local: dict) -> dict:
    out = dict(local)
    out.update(parallel.global_batch(mesh, {k: local[k] for k in keys}))
    return out

  return put
