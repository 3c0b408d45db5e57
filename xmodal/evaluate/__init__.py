"""Evaluators over a held-out split: cross-modal retrieval for every loss pair, and
zero-shot classification when the towers are an image and a text tower with class names.

`run(config, embedder, params, data)` -> flat metrics {"retrieval/image_to_text/R1": ..,
"zeroshot/top1": .., ...}; `data` is `pipeline.eval_arrays(config)`.
"""

import numpy as np

from xmodal import config as config_lib
from xmodal.data import pipeline, tokenizer as tokenizer_lib
from xmodal.evaluate import retrieval, zeroshot


def run(config, embedder, params, data) -> tuple[dict, dict]:
  """Returns (metrics, embeddings {modality: [N, D]}) for the eval split.

  Retrieval: row i of one modality matches row i of the other (instance R@1/5/10, both
  directions, every loss pair). With labels, also class-level top-1: the fraction of
  queries whose nearest item of the other modality has the same label. Zero-shot: an image
  ('vit') and a text tower, labels, and class names (the embedded dataset's or
  config.eval.classnames). Non-finite embeddings never count as matches; how many rows (all
  modalities) have one is "eval/nonfinite"."""
  labels = data["label"]
  has_labels = bool(np.all(labels >= 0))
  z = {m: embedder(params, m, data[m]) for m in config.towers}
  metrics = {}
  for a, b in config_lib.loss_pairs(config):
    for k, v in retrieval.bidirectional(a, z[a], b, z[b]).items():
      metrics[f"retrieval/{k}"] = v
    if has_labels and pipeline.ready_source(config, "eval"):
      for q, g in ((a, b), (b, a)):
        s = retrieval.scores(z[q], z[g])
        nearest = np.argmax(s, axis=1)
        hit = (labels[nearest] == labels) & np.isfinite(s.max(axis=1))
        metrics[f"retrieval/{q}_to_{g}/class_top1"] = float(np.mean(hit))
  names = pipeline.classnames(config)
  kinds = sorted(t.kind for t in config.towers.values())
  if names is not None and has_labels and kinds == ["text", "vit"]:
    if labels.max() >= len(names):
      raise config_lib.ConfigError(
          f"config.eval.classnames: {len(names)} class names, but the eval split has label "
          f"{int(labels.max())}; give one name per class, in label order")
    image_key, text_key = pipeline.modality_names(config)
    tok = tokenizer_lib.get_tokenizer(config)
    class_emb = zeroshot.class_embeddings(
        lambda texts: embedder(params, text_key, tok.encode_batch(texts)), names,
        config.eval.templates)
    for k, v in zeroshot.accuracy(z[image_key], class_emb, labels).items():
      metrics[f"zeroshot/{k}"] = v
    metrics["zeroshot/chance"] = 1.0 / len(names)
  metrics["eval/examples"] = len(labels)
  # Embeddings with a NaN or inf (every modality): scored as misses above.
  metrics["eval/nonfinite"] = sum(retrieval.nonfinite_rows(v) for v in z.values())
  metrics["eval/skipped"] = data["skipped"]
  for key, count in data.get("skipped_reasons", {}).items():   # "data/skipped/<reason>"
    metrics["eval/" + key.split("/", 1)[1]] = count
  return metrics, z
