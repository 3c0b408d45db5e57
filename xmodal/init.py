"""Initialising parameters (all, or any subtree) from converted weights or another run.

`config.init.source` (called `init.from` before) names the source: what
`tools/convert_weights.py` wrote (its folder, or the params.safetensors in it), any
`.safetensors` file of flattened xmodal names, or an xmodal workdir (its newest
checkpoint's params). `config.init.map` is ((dst_regex, src_template), ...): every
destination param whose name fully matches dst_regex takes the source param named by
`match.expand(src_template)`; with no map, every destination param that has a same-named
source param takes it. Names are compared in the unscanned layout (`.../block_3/...`), so
scanned and unscanned runs can initialise each other. Learned image position embeddings are
interpolated when the grids differ. Anything a pattern names but cannot find raises
ConfigError naming the field.

Without a map, `resolve(config)` first carries onto the config what the source's weights
fix (before validation, so the run's config.json records it): each text tower's
`context_length` (its position table) and a `loss.max_scale` that admits the source's
`logit_scale` (SigLIP checkpoints carry ~110-120; the optimizer clamps the parameter to
max_scale after each step, optim.clamp_scale).

`check_frozen` then refuses frozen weight matrices (`config.train.frozen`) that init did not
load: they would stay random for the whole run (LiT without its weights).
"""

import json
import logging
import os
import re

import jax
import numpy as np

from xmodal import config as config_lib, convert, optim
from xmodal.config import ConfigError
from xmodal.models import layers, vit

PARAMS_FILE = "params.safetensors"     # what tools/convert_weights.py writes in its folder


def _is_workdir(path: str) -> bool:
  return os.path.isdir(path) and os.path.exists(os.path.join(path, "config.json")) and \
      os.path.isdir(os.path.join(path, "checkpoints"))


def _safetensors_file(source: str) -> str | None:
  """The .safetensors file a source names: itself, or params.safetensors in a converted
  folder; None otherwise (a workdir, or nothing usable)."""
  if source.endswith(".safetensors"):
    return source
  if os.path.isdir(source) and os.path.isfile(os.path.join(source, PARAMS_FILE)):
    return os.path.join(source, PARAMS_FILE)
  return None


def read_source(source: str) -> dict:
  """{flat name: np.ndarray} in the unscanned layout."""
  source = os.path.expanduser(source)
  if _is_workdir(source):
    from xmodal import notebook  # noqa: PLC0415
    loaded = notebook.load(source, devices=jax.devices()[:1])
    flat = convert.flatten(jax.tree.map(np.asarray, loaded.params))
  elif _safetensors_file(source):
    flat = convert.load_safetensors(_safetensors_file(source))
  else:
    raise ConfigError(f"config.init.source: {source!r} is neither a .safetensors file, a "
                      f"folder of tools/convert_weights.py output nor an xmodal workdir")
  return convert.flatten(_unscan(convert.unflatten(flat)))


def _peek(source: str) -> tuple[dict, float | None]:
  """({tower name: text positions}, the largest logit_scale the source holds or None), read
  without loading the weights: the safetensors header (and its one scalar), or a workdir's
  config.json (its bound, log(loss.max_scale))."""
  if _is_workdir(source):
    with open(os.path.join(source, "config.json")) as f:
      saved = json.load(f)
    lengths = {name: tower.get("context_length") or saved["data"]["context_length"]
               for name, tower in saved["towers"].items() if tower.get("kind") == "text"}
    max_scale = saved["loss"].get("max_scale")
    return lengths, None if max_scale is None else float(np.log(max_scale))
  from safetensors import safe_open  # noqa: PLC0415
  lengths, log_scale = {}, None
  with safe_open(_safetensors_file(source), "numpy") as f:
    for key in f.keys():
      name, _, rest = key.partition("/")
      if rest == "encoder/pos_embed" and len(f.get_slice(key).get_shape()) == 3:
        lengths[name] = f.get_slice(key).get_shape()[1]
      elif key == "logit_scale":
        log_scale = f.get_tensor(key)
  return lengths, log_scale


def resolve(config) -> list[str]:
  """Carries what the weights of `config.init.source` fix onto `config`, in place, when no
  init.map picks subtrees: each text tower's context_length (0 = "the data's" becomes the
  source's position count; another non-zero value is a ConfigError naming the field) and
  loss.max_scale, raised to admit the source's scale. Returns what it set ("field=value")."""
  source = os.path.expanduser(config.init.get("source") or "")
  if not source or config.init.map or not (_is_workdir(source) or _safetensors_file(source)) \
      or not os.path.exists(_safetensors_file(source) or source):
    return []                             # validation reports a missing source
  lengths, log_scale = _peek(source)
  carried = []
  with config.unlocked():
    for name, tower in config.towers.items():
      if tower.get("kind") != "text" or name not in lengths:
        continue
      have, length = tower.get("context_length", 0), int(lengths[name])
      if not have:
        tower.context_length = length
        carried.append(f"towers.{name}.context_length={length}")
      elif have != length:
        raise config_lib.ConfigError(
            f"config.towers.{name}.context_length: {have}, but the {name} tower in "
            f"{config.init.source} has {length} positions; set it to {length} (or 0)")
    bound = None if log_scale is None else convert.scale_bound(log_scale, config.loss.max_scale)
    if bound is not None and bound > config.loss.max_scale:
      config.loss.max_scale = bound
      carried.append(f"loss.max_scale={bound:.6g}")
  if carried:
    print(f"init: from {config.init.source}: " + ", ".join(carried), flush=True)
  return carried


def _unscan(params: dict) -> dict:
  return layers.map_transformers(params, layers.unstack_blocks)


def _fit(name, value, shape):
  value = np.asarray(value, np.float32)
  if tuple(value.shape) == tuple(shape):
    return value
  if value.size == 1 and len(shape) <= 1 and int(np.prod(shape)) == 1:
    return value.reshape(shape)          # loss scalars: converters before 0-d wrote (1,)
  if name.endswith("pos_embed") and value.ndim == 3 and value.shape[-1] == shape[-1]:
    n_old, n_new = value.shape[1], shape[1]
    for prefix in (0, 1):
      old, new = int(round((n_old - prefix) ** 0.5)), int(round((n_new - prefix) ** 0.5))
      if old * old == n_old - prefix and new * new == n_new - prefix:
        return vit.resize_pos_embed(value, (new, new), num_prefix=prefix)
  raise ConfigError(f"config.init.source: {name} has shape {tuple(value.shape)} in the source, "
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
          raise ConfigError(f"config.init.map: {dst_rx!r} -> {src_tpl!r} wants source param "
                            f"{src!r}, which {len(source)} source params do not include")
        replaced[name] = _fit(name, source[src], dst[name].shape)
        hits += 1
      if not hits:
        raise ConfigError(f"config.init.map: {dst_rx!r} matches no model parameter")
  else:
    for name in dst:
      if name in source:
        replaced[name] = _fit(name, source[name], dst[name].shape)
    if not replaced:
      raise ConfigError("config.init.source: no source parameter has a model parameter's "
                        "name; give config.init.map")
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
  """Device params -> (the same tree with mapped leaves from `source`, on the same
  shardings; the names loaded, unscanned as `assign` gives them)."""
  new, names = assign(params, read_source(source), mapping)
  print(f"init: {len(names)} params from {source}", flush=True)
  return jax.tree.map(lambda old, v: jax.device_put(np.asarray(v, old.dtype), old.sharding),
                      params, new), names


def _model_layout(name: str, model_names: set) -> str:
  """An unscanned name (".../block_3/...") as the model names it: scanned towers stack
  their blocks under ".../blocks/..."."""
  scanned = re.sub(r"/block_\d+/", "/blocks/", name)
  return scanned if scanned in model_names else name


def check_frozen(config, params, loaded=()) -> None:
  """Frozen params (config.train.frozen) that init did not load keep their initial values
  for the whole run. For weight matrices (ndim >= 2) that is a LiT run without its weights:
  ConfigError. For scalars and vectors (a fixed temperature, norm scales) it can be meant:
  one warning line. `loaded`: the names `load_into` returned."""
  if not config.train.frozen:
    return
  names = optim.param_names(params)
  done = {_model_layout(n, set(names)) for n in loaded}
  labels = jax.tree.leaves(optim.frozen_labels(config)(params))
  random = [(n, p.ndim) for n, p, label in zip(names, jax.tree.leaves(params), labels)
            if label == optim.FROZEN and n not in done]
  matrices = [n for n, ndim in random if ndim >= 2]
  source = config.init.source or "nothing (config.init.source is empty)"
  if matrices:
    raise ConfigError(
        f"config.train.frozen: {len(matrices)} frozen weight matrices (e.g. {matrices[0]}) "
        f"are not loaded from {source}, so they would stay random for the whole run; set "
        f"config.init.source (and config.init.map) to weights that cover them, or narrow "
        f"config.train.frozen / config.train.unfrozen")
  if random:
    shown = ", ".join(n for n, _ in random[:5])
    logging.warning("config.train.frozen: frozen params not loaded from %s keep their initial "
                    "values: %s", source,
                    shown + (f" ({len(random)} in all)" if len(random) > 5 else ""))
