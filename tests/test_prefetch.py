"""Device prefetch (xmodal/prefetch.py): the same batches in the same order, as global device
arrays split over the batch axes; the next batches are transferred before the loop asks for
them; checkpoint state resumes exactly, in the format of the unprefetched pipeline."""

import threading
import time

import jax
import numpy as np

from xmodal import parallel, prefetch
from xmodal.data import pipeline

KEYS = ("image", "text")


def _config(make_tiny_config):
  return make_tiny_config(batch_size=16)


def _mesh(config):
  return parallel.make_mesh(config)


def _same(a, b):
  """Equal rows (host numpy or device arrays) for the model keys and the skip counts."""
  for k in KEYS + ("skipped",):
    np.testing.assert_array_equal(np.asarray(a[k]), np.asarray(b[k]), err_msg=k)


def test_same_batches_in_order_on_the_device(tiny_config):
  config = _config(tiny_config)
  mesh = _mesh(config)
  plain = iter(pipeline.train_dataset(config))
  fetched = iter(prefetch.to_device(pipeline.train_dataset(config),
                                    prefetch.device_batch(mesh, KEYS)))
  for _ in range(4):
    host, device = next(plain), next(fetched)
    _same(host, device)
    for k in KEYS:
      assert isinstance(device[k], jax.Array)
      assert device[k].sharding == parallel.batch_sharding(mesh), k
      assert len(device[k].sharding.device_set) == jax.device_count()
    assert isinstance(device["epoch"], np.ndarray)      # host bookkeeping stays on the host
  fetched.close()


def test_next_batches_are_put_before_the_loop_asks(tiny_config):
  config = _config(tiny_config)
  mesh = _mesh(config)
  put = prefetch.device_batch(mesh, KEYS)
  calls, lock = [], threading.Lock()

  def counting_put(local):
    with lock:
      calls.append(threading.current_thread().name)
    return put(local)

  it = iter(prefetch.to_device(pipeline.train_dataset(config), counting_put,
                               host_buffer=1, device_buffer=2))
  next(it)
  deadline = time.time() + 60
  while len(calls) < 3 and time.time() < deadline:    # batch 0 handed out; 1, 2 put ahead
    time.sleep(0.01)
  assert len(calls) >= 3, calls
  assert threading.main_thread().name not in calls    # never on the loop's thread
  it.close()


def test_checkpoint_state_resumes_exactly_and_matches_the_plain_format(tiny_config):
  config = _config(tiny_config)
  mesh = _mesh(config)
  put = prefetch.device_batch(mesh, KEYS)
  fetched = iter(prefetch.to_device(pipeline.train_dataset(config), put))
  for _ in range(3):
    next(fetched)
  time.sleep(0.5)                       # let the threads run ahead of what was consumed
  state = fetched.get_state()
  expected = next(fetched)              # batch 3
  fetched.close()

  plain = iter(pipeline.train_dataset(config))
  for _ in range(3):
    next(plain)
  assert state == plain.get_state()     # the unprefetched pipeline's state, same format

  resumed = iter(prefetch.to_device(pipeline.train_dataset(config), put))
  resumed.set_state(state)
  _same(expected, next(resumed))
  resumed.close()

  fresh = iter(pipeline.train_dataset(config))
  fresh.set_state(state)                # and back: a prefetched state restores unprefetched
  _same(expected, next(fresh))
