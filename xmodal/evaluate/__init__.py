"""Evaluators over a held-out split: zero-shot classification and cross-modal retrieval.

`run(config, embedder, params, data)` -> flat metrics {"zeroshot/top1": .., "retrieval/
image->text/R@1": .., ...}; `data` is `pipeline.eval_arrays(config)`.
"""

import numpy as np

from xmodal.data import pipeline, tokenizer as tokenizer_lib
from xmodal.evaluate import retrieval, zeroshot


def run(config, embedder, params, data) -> tuple[dict, dict]:
  """Returns (metrics, embeddings {modality: [N, D]}) for the eval split."""
  image_key, text_key = pipeline.modality_names(config)
  tok = tokenizer_lib.get_tokenizer(config)
  z_image = embedder(params, image_key, data[image_key])
  z_text = embedder(params, text_key, data[text_key])
  metrics = {f"retrieval/{k}": v
             for k, v in retrieval.bidirectional(image_key, z_image, text_key, z_text).items()}
  names = pipeline.classnames(config)
  labels = data["label"]
  if names is not None and np.all(labels >= 0):
    class_emb = zeroshot.class_embeddings(
        lambda texts: embedder(params, text_key, tok.encode_batch(texts)), names,
        config.eval.templates)
    for k, v in zeroshot.accuracy(z_image, class_emb, labels).items():
      metrics[f"zeroshot/{k}"] = v
    metrics["zeroshot/chance"] = 1.0 / len(names)
  metrics["eval/examples"] = len(z_image)
  metrics["eval/skipped"] = data["skipped"]
  return metrics, {image_key: z_image, text_key: z_text}
