"""A converted model as it is: its towers, embedding size, image size, text length, loss and
scale bound from what tools/convert_weights.py wrote, its params from the same folder
(init.source). Towers the conversion has no weights for keep the default (a BERT-family
text encoder gets the default ViT beside it, trained from scratch).

ARG: FOLDER[,TOKENIZER]. FOLDER is what tools/convert_weights.py wrote (default
weights/converted); TOKENIZER the original model's tokenizer file, its kind told by the name:
`*.gz` the CLIP BPE (`clip`, e.g. open_clip's bpe_simple_vocab_16e6.txt.gz), `*.model`
SentencePiece (SigLIP), `*.json` a Hugging Face tokenizer.json (BERT family). Without it
the byte tokenizer is used: fine for training a text tower anew, not for the original's
text embeddings (and a CLIP text tower, pooled at the highest id, needs the CLIP BPE).

Command:
  python tools/convert_weights.py --input siglip-base-patch16-224/ --output weights/siglip_b16
  xmodal train --workdir=runs/siglip_ft \
      --config=configs/converted.py:weights/siglip_b16,siglip-base-patch16-224/spiece.model \
      [--config.data.source=manifest --config.data.train_files=...]
  (--config.init.source=... names other weights of the same architecture; init.map a subtree.)
Expected hardware: what the converted model needs (ViT-B/16: one accelerator with bfloat16
  at batch 256; CPU for tiny models and smoke tests).
Expected result: with every parameter frozen (--config.train.frozen='(".*",)'),
  xmodal.load(workdir).similarity(image=..., text=token_ids) equals the original's
  transformers logits_per_image to 1e-4 x scale (tested on random CLIP and SigLIP models in
  tests/test_convert.py); fine-tuned results depend on the data.
"""

import os

from xmodal import convert, default_config

TOKENIZERS = {".gz": "clip", ".model": "sentencepiece", ".json": "hf"}


def get_config(arg=None):
  folder, _, tokenizer = (arg or "weights/converted").partition(",")
  if not os.path.isfile(os.path.join(folder, "towers.json")):
    raise FileNotFoundError(f"configs/converted.py: no towers.json in {folder!r}; write it with "
                            f"python tools/convert_weights.py --input MODEL --output {folder}")
  c = default_config.get_config()
  towers, settings = convert.read_saved(folder)
  convert.apply_saved(c, towers, settings)
  c.init.source = folder
  if tokenizer:
    kind = TOKENIZERS.get(os.path.splitext(tokenizer)[1])
    if kind is None:
      raise ValueError(f"configs/converted.py: cannot tell the tokenizer kind of {tokenizer!r}; "
                       f"known endings: {TOKENIZERS}")
    c.data.tokenizer, c.data.tokenizer_path = kind, tokenizer
  return c
