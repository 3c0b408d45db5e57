"""Converts pretrained weights into xmodal's parameter names.

    python tools/convert_weights.py --input ~/models/clip-vit-base-patch16 --output weights/clip_b16
    python tools/convert_weights.py --input DIR --kind hf-siglip --image-size 384 --output ...
    python tools/convert_weights.py --input all-MiniLM-L6-v2/ --kind hf-bert --pool mean ...
    python tools/convert_weights.py --input open_clip_dir/ --kind open-clip --output ...

--input: a Hugging Face model directory (config.json + *.safetensors: CLIPModel, SiglipModel,
BertModel) or an open_clip directory (open_clip_config.json + open_clip_model.safetensors
or a torch .bin/.pt, which needs torch). Writes OUTPUT/params.safetensors (flattened names
"image/encoder/transformer/block_0/attn/qkv/kernel", ..., and the 0-d loss scalars
logit_scale / logit_bias), OUTPUT/towers.json (the tower config sections and the settings the
weights fix: model.embed_dim, and as extra.* the image size, the text context length and the
loss; loss.max_scale when the checkpoint's scale is above 100) and prints the report of
unused source keys.

Use the result as it is with `xmodal train --config=configs/converted.py:OUTPUT`, or with a
card of the same architecture and `--config.init.source=OUTPUT` (configs/clip_vit_b16.py,
configs/siglip_b16.py), or a subtree of it with init.map (configs/lit_frozen_clip_image.py).
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from xmodal import convert  # noqa: E402


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--input", required=True)
  ap.add_argument("--output", required=True)
  ap.add_argument("--kind", default="auto", choices=["auto", "hf-clip", "hf-siglip", "hf-bert",
                                                     "open-clip"])
  ap.add_argument("--image-size", type=int, default=0, help="interpolate positions to this size")
  ap.add_argument("--pool", default="mean", choices=["mean", "first"], help="BERT pooling")
  ap.add_argument("--image-name", default="image")
  ap.add_argument("--text-name", default="text")
  ap.add_argument("--scan", action="store_true", help="stack blocks for towers with scan=True")
  args = ap.parse_args(argv)
  kind = convert.detect(args.input) if args.kind == "auto" else args.kind
  kwargs = {"scan": args.scan, "text": args.text_name}
  if kind == "hf-bert":
    kwargs["pool"] = args.pool
  else:
    kwargs.update(image=args.image_name, image_size=args.image_size)
  conv = convert.load(args.input, kind, **kwargs)
  from safetensors.numpy import save_file  # noqa: PLC0415
  os.makedirs(args.output, exist_ok=True)
  # np.array, not np.ascontiguousarray: the latter turns the 0-d loss scalars into shape (1,).
  flat = {k: np.array(v, np.float32, order="C") for k, v in convert.flatten(conv.params).items()}
  save_file(flat, os.path.join(args.output, "params.safetensors"))
  with open(os.path.join(args.output, "towers.json"), "w") as f:
    json.dump(convert.towers_json(conv, kind), f, indent=2, default=list)
  n = sum(v.size for v in flat.values())
  print(f"{kind}: {len(flat)} params ({n / 1e6:.1f}M values) -> {args.output}")
  print(conv.report)


if __name__ == "__main__":
  main()
