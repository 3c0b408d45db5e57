"""SigLIP B/16: sigmoid loss (t=10, b=-10), MAP-head ViT without class token (gelu_tanh,
pixels normalised to [-1, 1]), bidirectional 12-layer text tower pooled at the last
position with a biased linear head; the image MAP output is the embedding (head "none").

Command:
  xmodal train --config configs/siglip_b16.py --workdir runs/siglip_b16 \
      --config.data.source=manifest --config.data.train_manifest='data/train-*.jsonl' \
      --config.data.eval_manifest=data/val.jsonl
  From Google's weights: python tools/convert_weights.py --input siglip-base-patch16-224/
      --output weights/siglip_b16, then --config.init.source=weights/siglip_b16 with SigLIP's
  tokenizer (--config.data.tokenizer=sentencepiece --config.data.tokenizer_path=
  siglip-base-patch16-224/spiece.model); init.source also raises loss.max_scale to the
  checkpoint's scale, ~117, so nothing is clipped. Or
  configs/converted.py:weights/siglip_b16,spiece.model for the model exactly as converted.
  Text: SigLIP attends to every position, padding included (README: "SigLIP text
  padding"); the byte tokenizer differs from SigLIP's SentencePiece, so with it carry the
  image tower only: --config.init.map='(("image/(.*)", "image/\\1"),)'.
Expected hardware: 8+ accelerators (H100/TPU v4), bfloat16; the sigmoid loss's gathered
  implementation keeps memory flat in the global batch.
Expected result: not reproduced here. Reference: SigLIP B/16 (WebLI 40B examples seen)
  76.2% ImageNet zero-shot; small-data runs land far lower.
"""

from xmodal import default_config


def get_config(arg=None):
  del arg
  c = default_config.get_config()
  c.batch_size = 4096
  c.data.image_size = 224
  c.data.context_length = 64
  c.model.embed_dim = 768
  c.model.compute_dtype = "bfloat16"
  img = c.towers.image
  img.variant = "B/16"
  img.pool, img.head = "map", "none"
  img.norm_mean, img.norm_std = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
  img.remat, img.scan = "dots", True
  txt = c.towers.text
  txt.width, txt.depth, txt.num_heads = 768, 12, 12
  txt.causal, txt.pool, txt.head, txt.head_bias = False, "last", "linear", True
  txt.remat, txt.scan = "dots", True
  c.loss.name = "sigmoid"
  c.optim.lr, c.optim.weight_decay, c.optim.warmup_steps = 1e-3, 1e-4, 2000
  c.train.total_steps = 100_000
  c.train.log_every, c.train.eval_every, c.train.checkpoint_every = 100, 5000, 2000
  c.mesh.fsdp = 8
  return c
