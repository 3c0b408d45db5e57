"""Three towers (image, audio, text) aligned at once, on generated data.

  xmodal train --config=configs/three_towers.py:binding --workdir=runs/bind3
  xmodal train --config=configs/three_towers.py:symile --workdir=runs/symile3

The argument names the objective over the group image:audio:text (docs/objectives.md):
`binding` (ImageBind: audio and text each bound to the image anchor by CLIP), `symile`
(the multilinear inner product, anchors in turn), `gram` (the Gram volume, text anchor),
`mv_infonce`, `mv_dhel`, or `softmax` (summed pairwise CLIP, the baseline). Each group part
is logged (loss/<term>/<group>/<part>), and every evaluation logs retrieval and geometry
(modality gap, alignment, uniformity, effective rank) for each of the three pairs, and for
symile / gram the joint retrieval of each tower from the other two.

data.source="synthetic": generated image/tone/caption triples of 8 latent classes.
Hardware: CPU (2 cores) is enough: a few minutes. Expected result: the loss falls and
every pair's retrieval is above chance (tests/test_group_toys.py runs it smaller).
"""

import ml_collections

from xmodal import default_config
from xmodal.losses import terms


def get_config(arg=None):
  objective = arg or "binding"
  c = default_config.get_config()
  audio = default_config.tower_defaults("audio")
  audio.update(dict(frames=48, n_mels=32, patch_size=8, width=64, depth=2, num_heads=4))
  c.towers = default_config.ConfigDict({"image": c.towers.image, "audio": audio,
                                        "text": c.towers.text})
  for name in ("image", "text"):
    c.towers[name].update(dict(width=64, depth=2, num_heads=4))
  c.data.image_size = 32
  c.towers.image.patch_size = 8
  c.data.source = "synthetic"
  c.data.context_length = 32
  c.model.embed_dim = 64
  c.batch_size = 64
  c.optim.lr, c.optim.warmup_steps = 2e-3, 20
  c.train.total_steps = 300
  group = ("image:audio:text",) if objective != "gram" else ("text:image:audio",)
  options = {"binding": dict(anchor="image")}.get(objective, {})
  if objective != "softmax":
    c.loss.terms = ml_collections.ConfigDict({objective: terms.section(
        objective, pairs=group, **options)})
  return c
