"""Audio-text: a patch-transformer over log-mel spectrograms (numpy front end,
xmodal/data/audio.py) paired with the byte-level text tower, softmax loss.

Command (data.source="synthetic": generated tone/caption pairs of 8 latent classes; there
is no audio manifest reader yet):
  xmodal train --config=configs/audio_text.py --workdir=runs/audio_text
Expected hardware: CPU (2 cores) is enough: ~1-3 minutes.
Expected result: loss falls from ~log(batch) toward ~1.5 and audio->text class retrieval
  accuracy well above chance (1/8); tests/test_modalities.py checks the same recipe at a
  smaller size.
"""

from xmodal import default_config


def get_config(arg=None):
  del arg
  c = default_config.get_config()
  audio = default_config.tower_defaults("audio")
  audio.update(dict(frames=48, n_mels=32, patch_size=8, width=64, depth=2, num_heads=4))
  c.towers = default_config.ConfigDict({"audio": audio, "text": c.towers.text})
  c.towers.text.update(dict(width=64, depth=2, num_heads=4))
  c.data.source = "synthetic"
  c.data.context_length = 32
  c.model.embed_dim = 64
  c.batch_size = 64
  c.optim.lr, c.optim.warmup_steps = 2e-3, 20
  c.train.total_steps = 300
  return c
