"""Initialising parameters (all, or any subtree) from converted weights or another run.

`config.init.from` names the source: a `.safetensors` file of flattened xmodal names (what
`tools/convert_weights.py` writes), or an xmodal workdir (its newest checkpoint's params).
`config.init.map` is ((dst_regex, src_template), ...): every destination param whose name
fully matches dst_regex takes the source param named by `match.expand(src_template)`; with
no map, every destination param that has a same-named source param takes it. Names are
compared in the unscanned layout (`.../block_3/...`), so scanned and unscanned runs can
initialise each other. Learned position embeddings are interpolated when the grids differ.
Anything a pattern names but cannot find raises ValueError.
"""

import os
import re

import jax
import numpy as np

from xmodal import convert
from xmodal.models import layers, vit


def read_source(source: str) -> dict:
  """{flat name: np.ndarray} in the unscanned layout."""
  if source.endswith(".safetensors"):
    flat = convert.load_safetensors(source)
  elif os.path.isdir(source) and os.path.exists(os.path.join(source, "config.json")) and \
      os.path.isdir(os.path.join(source, "checkpoints")):
    from xmodal import notebook  # noqa: PLC0415
    loaded = notebook.load(source, devices=jax.devices()[:1])
    flat = convert.flatten(jax.tree.map(np.asarray, loaded.params))
  else:
    raise ValueError(f"config.init.from: {source!r} is neither a .safetensors file nor an "
                     f"xmodal workdir")
  return convert.flatten(_unscan(convert.unflatten(flat)))


def _unscan(params: dict) -> dict:
  return layers.map_transformers(params, layers.unstack_blocks)


def _fit(name, value, shape):
  value = np.asarray(value, np.float32)
  if tuple(value.shape) == tuple(shape):
    return value
  if name.endswith("pos_embed") and value.ndim == 3 and value.shape[-1] == shape[-1]:
    n_old, n_new = value.shape[1], shape[1]
    for prefix in (0, 1):
      old, new = int(round((n_old - prefix) ** 0.5)), int(round((n_new - prefix) ** 0.5))
      if old * old == n_old - prefix and new * new == n_new - prefix:
        return vit.resize_pos_embed(value, (new, new), num_prefix=prefix)
  raise ValueError(f"init: {name} has shape {tuple(value.shape)} in the source, "
                   f"{tuple(shape)} in the model")


def assign(params, source: dict, mapping=()) -> tuple[dict, list[str]]:
  """New params (numpy) with the mapped leaves replaced; returns (params, names replaced)."""
  host = jax.tree.map(np.asarray, params)
  dst = convert.flatten(_unscan(host))
  replaced = {}
  if mapping:
    for dst_rx, src_tpl in mapping:
      hits = 0
      for name in dst:
        m = re.fullmatch(dst_rx, name)
        if not m:
          continue
        src = m.expand(src_tpl)
        if src not in source:
          raise ValueError(f"config.init.map: {dst_rx!r} -> {src_tpl!r} wants source param "
                           f"{src!r}, which {len(source)} source params do not include")
        replaced[name] = _fit(name, source[src], dst[name].shape)
        hits += 1
      if not hits:
        raise ValueError(f"config.init.map: {dst_rx!r} matches no model parameter")
  else:
    for name in dst:
      if name in source:
        replaced[name] = _fit(name, source[name], dst[name].shape)
    if not replaced:
      raise ValueError("config.init.from: no source parameter has a model parameter's name; "
                       "give config.init.map")
  dst.update(replaced)
  new = convert.unflatten(dst)
  # Back to the model's own (possibly scanned) layout.
  def restack(model_tree, new_tree):
    out = {}
    for k, v in model_tree.items():
      if k == "transformer" and isinstance(v, dict) and "blocks" in v:
        out[k] = layers.stack_blocks(new_tree[k])
      elif isinstance(v, dict):
        out[k] = restack(v, new_tree[k])
      else:
        out[k] = new_tree[k]
    return out
  return restack(host, new), sorted(replaced)


def load_into(params, source: str, mapping=()):
  """Device params -> the same tree with mapped leaves from `source`, on the same shardings."""
  new, names = assign(params, read_source(source), mapping)
  print(f"init: {len(names)} params from {source}", flush=True)
  return jax.tree.map(lambda old, v: jax.device_put(np.asarray(v, old.dtype), old.sharding),
                      params, new)
