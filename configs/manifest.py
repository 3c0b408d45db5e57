"""Train on your own (image, caption) pairs listed in JSONL or CSV manifests.

  xmodal train --config=configs/manifest.py:/data/train.jsonl,/data/val.jsonl --workdir=runs/mine

ARG is "TRAIN_MANIFEST,EVAL_MANIFEST" (globs allowed). Each JSONL row is
{"image": "relative/or/absolute/path.jpg", "caption": "...", "label": 3}; CSV manifests have
a header row with the same column names (rename them with --config.data.image_key=... and
--config.data.caption_key=...). Relative paths resolve against the manifest's folder.
Rows whose image cannot be read or whose caption is empty are skipped and counted
(`data/skipped` in the metrics). For zero-shot evaluation give a class-name file
(--config.eval.classnames=classes.txt, one name a line, the label is the line index) and
prompt templates (--config.eval.templates is a tuple: set it in a copy of this file).

Hardware: a small ViT-S/16-sized model at 224 pixels; one GPU or a TPU host. On CPU, lower
data.image_size and the tower sizes.
"""

from xmodal import default_config


def get_config(arg=None):
  train_manifest, eval_manifest = (arg or "train.jsonl,val.jsonl").split(",")
  config = default_config.get_config()
  config.data.source = "manifest"
  config.data.train_manifest = train_manifest
  config.data.eval_manifest = eval_manifest
  config.data.image_size = 224
  config.data.crop_scale = (0.5, 1.0)
  config.data.context_length = 64
  config.data.num_workers = 4
  config.towers.image.update(dict(patch_size=16, width=384, depth=12, num_heads=6))
  config.towers.text.update(dict(width=384, depth=12, num_heads=6))
  config.model.embed_dim = 384
  config.model.compute_dtype = "bfloat16"
  config.batch_size = 1024
  config.optim.lr = 5e-4
  config.optim.warmup_steps = 2000
  config.optim.weight_decay = 0.2
  config.train.total_steps = 50_000
  config.train.log_every = 100
  config.train.eval_every = 2500
  config.train.checkpoint_every = 1000
  config.eval.templates = ("a photo of a {}.", "a picture of a {}.", "an image of the {}.")
  return config
