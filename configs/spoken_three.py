"""Three modalities per record: a shapes image, its caption spoken by espeak-ng, and the
written caption, from one JSONL manifest; the loss sums over the three pairs
(image:audio, image:text, audio:text).

Data: as configs/spoken_audio_text.py (tools/make_spoken_shapes.py).
Command:
  xmodal train --config=configs/spoken_three.py:data/spoken_shapes --workdir=runs/spoken3
Hardware: CPU; 2 cores are enough.
Result (measured 2026-11-30 on the 2-core development machine while other jobs shared it:
  29 min wall, 12 CPU-minutes for this run; 600 steps at batch 64): training loss 0.50 at
  step 550 (sum of three pairs: 0.72 audio:image, 0.38 audio:text, 0.39 image:text); on
  the 300 held-out records (chance R@1 = 0.003), R@1 / R@5:
  audio->text 0.60 / 0.92, text->audio 0.58 / 0.93, image->text 0.65 / 1.00,
  text->image 0.65 / 1.00, audio->image 0.35 / 0.83, image->audio 0.34 / 0.80.
"""

from xmodal import default_config


def get_config(arg=None):
  import importlib.util
  import os
  spec = importlib.util.spec_from_file_location(
      "spoken_audio_text", os.path.join(os.path.dirname(__file__), "spoken_audio_text.py"))
  base = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(base)
  c = base.get_config(arg)
  image = default_config.tower_defaults("vit")
  image.update(dict(patch_size=8, width=64, depth=2, num_heads=4))
  c.towers = default_config.ConfigDict({"image": image, "audio": c.towers.audio,
                                        "text": c.towers.text})
  c.data.image_size = 32
  return c
