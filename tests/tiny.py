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
