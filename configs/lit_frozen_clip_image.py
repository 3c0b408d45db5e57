"""LiT ("locked-image tuning"): a pretrained, converted CLIP image tower frozen
(train.frozen), a byte-level text tower trained from scratch to meet it.

Command (ARG = the directory tools/convert_weights.py wrote):
  python tools/convert_weights.py --input clip-vit-base-patch16/ --output weights/clip_b16
  xmodal train --config configs/lit_frozen_clip_image.py:weights/clip_b16 --workdir runs/lit \
      [--config.data.source=manifest --config.data.train_manifest=... ]
  The image tower section comes from weights/clip_b16/towers.json; init.source loads its
  params (image/* only, by init.map) and train.frozen locks them, head included, so the
  text tower learns into CLIP's 512-d embedding space. A folder without towers.json is an
  error naming config.init.source (the card would otherwise freeze a random image tower).
Expected hardware: 1 GPU (H100) for the shapes dataset at 224 px (the frozen tower runs
  forward only); CPU works for a smoke test with a small --config.train.total_steps.
Expected result: not measured here. In LiT (Zhai et al. 2022) a locked image tower
  trains a text tower to zero-shot accuracy far above from-scratch training at equal data;
  on the embedded shapes dataset expect zero-shot top-1 well above chance (1/30).
"""

import os

from xmodal import convert, default_config
from xmodal.config import ConfigError


def get_config(arg=None):
  c = default_config.get_config()
  weights = arg or "weights/clip_b16"
  # Without the weights this card would train a random image tower, frozen: refuse.
  if not os.path.isfile(os.path.join(weights, "towers.json")):
    raise ConfigError(
        f"config.init.source: the LiT card needs converted CLIP weights, and {weights!r} has "
        f"no towers.json; write them with `python tools/convert_weights.py --input "
        f"clip-vit-base-patch16/ --output {weights}`, then pass the folder: "
        f"--config=configs/lit_frozen_clip_image.py:{weights}")
  towers, settings = convert.read_saved(weights)
  image_name = next(m for m, t in towers.items() if t["kind"] == "vit")
  c.towers.image.update({k: tuple(v) if isinstance(v, list) else v
                         for k, v in towers[image_name].items()})
  c.model.embed_dim = settings["model.embed_dim"]
  c.data.image_size = settings.get("data.image_size", 224)
  c.init.source = os.path.join(weights, "params.safetensors")
  c.init.map = ((r"image/(.*)", rf"{image_name}/\1"),)
  c.towers.text.update(dict(width=256, depth=6, num_heads=4))
  c.train.frozen = (r"image/.*",)
  c.loss.name = "softmax"
  c.batch_size = 128
  c.train.total_steps = 2000
  return c
