"""Small, seconds-fast configs for tests. Importing this touches no environment variables,
so worker processes can use it with their own device counts."""

from xmodal import default_config


def make_tiny_config(**overrides):
  """A seconds-fast config: 16-pixel shapes, one-block towers, global batch 32."""
  c = default_config.get_config()
  c.data.image_size = 16
  c.towers.image.patch_size = 8
  for tower in c.towers.values():
    tower.width, tower.depth, tower.num_heads = 32, 1, 2
  c.model.embed_dim = 32
  c.batch_size = 32
  c.eval.batch_size = 64
  c.data.shapes_eval_size = 128
  c.optim.warmup_steps = 2
  c.train.total_steps = 20
  c.train.log_every = 1
  c.train.eval_every = 0
  c.train.checkpoint_every = 10
  for key, value in overrides.items():
    node = c
    *path, last = key.split(".")
    for p in path:
      node = node[p]
    node[last] = value
  return c


def write_converted_weights(folder) -> str:
  """`folder` as tools/convert_weights.py writes it (params.safetensors of flattened names
  and towers.json) for the image tower of a freshly initialised tiny model: what the LiT
  card reads. Returns the folder."""
  import json
  import os
  import jax
  import numpy as np
  from safetensors.numpy import save_file
  from xmodal import convert
  from xmodal.models import model as model_lib
  config = make_tiny_config()
  model = model_lib.MultiTower(config)
  params = model_lib.unbox(model.init(jax.random.key(0), model_lib.dummy_inputs(config, 2))
                           ["params"])
  os.makedirs(folder, exist_ok=True)
  save_file({k: np.asarray(v) for k, v in convert.flatten({"image": params["image"]}).items()},
            os.path.join(folder, "params.safetensors"))
  with open(os.path.join(folder, "towers.json"), "w") as f:
    json.dump({"kind": "xmodal", "towers": {"image": config.towers.image.to_dict()},
               "model.embed_dim": config.model.embed_dim,
               "extra.image_size": config.data.image_size}, f, default=list)
  return str(folder)
