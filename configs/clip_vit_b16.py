"""CLIP ViT-B/16: OpenAI's architecture (quick_gelu, class token, ln_pre, post-LN class
token, 12-layer 512-wide causal text tower with EOT pooling), softmax loss.

ARG (optional): the CLIP BPE merges file (`bpe_simple_vocab_16e6.txt.gz`, e.g. from the
open_clip package). With it the text is tokenised exactly as open_clip does (vocab 49,408,
pad 0, 77 tokens) and the text tower pools at the highest id (EOT) as OpenAI's; without it
the byte tokenizer is used.

Command:
  xmodal train --config configs/clip_vit_b16.py[:bpe_simple_vocab_16e6.txt.gz] \
      --workdir runs/clip_b16 \
      --config.data.source=manifest --config.data.train_manifest='data/train-*.jsonl' \
      --config.data.eval_manifest=data/val.jsonl
  Starting from OpenAI weights: convert them first
      python tools/convert_weights.py --input clip-vit-base-patch16/ --output weights/clip_b16
  then add --config.init.source=weights/clip_b16 (init.from, the old name, works too).
  With the BPE file as ARG both towers carry over unchanged; with the byte tokenizer only
  the image tower does: --config.init.map='(("image/(.*)", "image/\\1"),)'.
Expected hardware: a 8+ accelerator slice (H100/TPU v4) with bfloat16 compute; global
  batch 4096 fits on 8 x 80 GB with remat="dots"; CPU only for shape/compile checks.
Expected result: not reproduced here. For reference, OpenAI CLIP ViT-B/16 (400M pairs,
  32 epochs, batch 32768) reaches 68.3% ImageNet zero-shot top-1; on a few million pairs
  expect far lower (CC3M-scale: roughly 15-20%).
"""

from xmodal import default_config


def get_config(arg=None):
  c = default_config.get_config()
  c.batch_size = 4096
  c.data.image_size = 224
  c.data.context_length = 77
  c.model.embed_dim = 512
  c.model.compute_dtype = "bfloat16"
  img = c.towers.image
  img.variant = "B/16"
  img.pool, img.pre_norm, img.act, img.layer_norm_eps = "cls", True, "quick_gelu", 1e-5
  img.remat, img.scan = "dots", True
  txt = c.towers.text
  txt.width, txt.depth, txt.num_heads = 512, 12, 8
  txt.causal, txt.pool, txt.act, txt.layer_norm_eps = True, "eot", "quick_gelu", 1e-5
  txt.remat, txt.scan = "dots", True
  if arg:
    c.data.tokenizer, c.data.tokenizer_path = "clip", arg
    txt.pool = "argmax"
  c.loss.name = "softmax"
  c.optim.lr, c.optim.weight_decay, c.optim.warmup_steps = 5e-4, 0.2, 2000
  c.train.total_steps = 100_000
  c.train.log_every, c.train.eval_every, c.train.checkpoint_every = 100, 5000, 2000
  c.mesh.fsdp = 8
  return c
