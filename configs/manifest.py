"""Train on your own (image, caption) pairs listed in JSONL or CSV manifests.

  xmodal train --config=configs/manifest.py:/data/train.jsonl,/data/val.jsonl,size=cpu \
      --workdir=runs/mine

ARG is "TRAIN_MANIFEST,EVAL_MANIFEST[,size=cpu|gpu]" (globs allowed; size defaults to gpu).
Each JSONL row is {"image": "relative/or/absolute/path.jpg", "caption": "...", "label": 3};
CSV manifests have a header row with the same column names (rename them with
--config.data.image_key=... and --config.data.caption_key=...). Relative paths resolve
against the manifest's folder. Rows whose image cannot be read or whose caption is empty
are skipped and counted (`data/skipped` in the metrics). For zero-shot evaluation give a
class-name file (--config.eval.classnames=classes.txt, one name a line, the label is the
line index) and prompt templates (--config.eval.templates="('a photo of a {}.',)").

Sizes:
  gpu  a ViT-S/16-sized model (384 wide, 12 layers) at 224 pixels, bfloat16, global batch
       1,024, 50,000 steps: one GPU or a TPU host.
  cpu  a laptop or a CPU-only machine: 64-pixel images in 16-pixel patches, 3-layer
       128-wide towers (1.69M parameters), batch 64, 300 steps: per step about the work
       of the embedded default run. Measured on a few hundred images (the clip-art corpus
       tests/test_configs.py writes: 320 training and 96 held-out PNG/JPEG images, a third
       transparent, captions like "two red stars", 30 "colour shape" classes), with
       `xmodal train` on one CPU device: 5 min 14 s on 2 cores shared with other jobs (load
       average ~10; 1 min 46 s of CPU time), loss 3.10 at step 25 -> 0.87 at step 300,
       held-out zero-shot top-1 0.78 (chance 0.033), text->image R@1 0.40 (60 distinct
       captions among the 96 images).
"""

from xmodal import default_config

SIZES = ("cpu", "gpu")


def parse_arg(arg: str | None) -> tuple[str, str, str]:
  """"TRAIN,EVAL[,size=cpu|gpu]" -> (train manifest, eval manifest, size)."""
  parts = [p.strip() for p in (arg or "train.jsonl,val.jsonl").split(",")]
  options = dict(p.split("=", 1) for p in parts if "=" in p)
  manifests = [p for p in parts if "=" not in p]
  size = options.pop("size", "gpu")
  if len(manifests) != 2 or options or size not in SIZES:
    raise ValueError(f"configs/manifest.py: expected TRAIN_MANIFEST,EVAL_MANIFEST[,size=cpu|"
                     f"gpu], got {arg!r}")
  return manifests[0], manifests[1], size


def get_config(arg=None):
  train_manifest, eval_manifest, size = parse_arg(arg)
  config = default_config.get_config()
  config.data.source = "manifest"
  config.data.train_manifest = train_manifest
  config.data.eval_manifest = eval_manifest
  config.eval.templates = ("a photo of a {}.", "a picture of a {}.", "an image of the {}.")
  if size == "gpu":
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
    return config
  # cpu: sized so that a few hundred images learn in minutes on two cores.
  config.data.image_size = 64
  config.data.crop_scale = (0.6, 1.0)
  config.data.context_length = 32
  config.data.num_workers = 0              # decoding 64 small images a step is cheap
  # 16 patches of 16 pixels: per step about the work of the embedded default run.
  config.towers.image.update(dict(patch_size=16, width=128, depth=3, num_heads=4))
  config.towers.text.update(dict(width=128, depth=3, num_heads=4))
  config.model.embed_dim = 128
  config.batch_size = 64
  config.eval.batch_size = 64
  config.optim.lr = 1e-3
  config.optim.warmup_steps = 30
  config.train.total_steps = 300
  config.train.log_every = 25
  config.train.eval_every = 100
  config.train.checkpoint_every = 100
  return config
