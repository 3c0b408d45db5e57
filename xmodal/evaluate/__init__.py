"""Evaluators over a held-out split: cross-modal retrieval and the space's geometry
(evaluate/geometry.py: modality gap, alignment, uniformity, effective rank) for every loss
pair, joint retrieval for Symile / GRAM terms (evaluate/joint.py), and zero-shot
classification when the towers are an image and a text tower with class names.

`run(config, embedder, params, data)` -> flat metrics {"retrieval/image->text/R@1": ..,
"zeroshot/top1": .., ...}; `data` is `pipeline.eval_arrays(config)`.
"""

import numpy as np

from xmodal import config as config_lib
from xmodal.data import pipeline, tokenizer as tokenizer_lib
from xmodal.evaluate import geometry, joint, retrieval, zeroshot


def run(config, embedder, params, data) -> tuple[dict, dict]:
  """Returns (metrics, embeddings {modality: [N, D]}) for the eval split.

  Retrieval: row i of one modality matches row i of the other (instance R@1/5/10, both
  directions, every loss pair). With labels, also class-level top-1: the fraction of
  queries whose nearest item of the other modality has the same label. Zero-shot: an image
  ('vit') and a text tower, labels, and class names (the embedded dataset's or
  config.eval.classnames)."""
  labels = data["label"]
  has_labels = bool(np.all(labels >= 0))
  z = {m: embedder(params, m, data[config_lib.input_key(config, m)]) for m in config.towers}
  metrics = {}
  for a, b in config_lib.loss_pairs(config):
    for k, v in retrieval.bidirectional(a, z[a], b, z[b]).items():
      metrics[f"retrieval/{k}"] = v
    for k, v in geometry.pair_metrics(a, z[a], b, z[b]).items():   # gap, alignment, ...
      metrics[f"geometry/{k}"] = v
    if has_labels and pipeline.ready_source(config, "eval"):
      for q, g in ((a, b), (b, a)):
        nearest = np.argmax(z[q] @ z[g].T, axis=1)
        metrics[f"retrieval/{q}->{g}/class_top1"] = float(np.mean(labels[nearest] == labels))
  metrics.update(joint.metrics(config, z, params))
  names = pipeline.classnames(config)
  kinds = sorted(t.kind for t in config.towers.values() if not t.get("input"))
  if names is not None and has_labels and kinds == ["text", "vit"]:
    image_key, text_key = pipeline.modality_names(config)
    tok = tokenizer_lib.get_tokenizer(config)
    class_emb = zeroshot.class_embeddings(
        lambda texts: embedder(params, text_key, tok.encode_batch(texts)), names,
        config.eval.templates)
    for k, v in zeroshot.accuracy(z[image_key], class_emb, labels).items():
      metrics[f"zeroshot/{k}"] = v
    metrics["zeroshot/chance"] = 1.0 / len(names)
  metrics["eval/examples"] = len(labels)
  metrics["eval/skipped"] = data["skipped"]
  return metrics, z
