"""Zero-shot classification: class names x prompt templates -> averaged class embeddings;
an image's prediction is the class whose embedding is most similar. An image with a
non-finite embedding is a miss, and so is one whose true class has one."""

import numpy as np

from xmodal.evaluate import retrieval


def prompt(template, classname: str) -> str:
  """A template ("a photo of a {}." or, as open_clip's, a function of the class name)
  filled with `classname`."""
  return template(classname) if callable(template) else template.format(classname)


def class_embeddings(embed_text, classnames, templates) -> np.ndarray:
  """embed_text(list of N strings) -> [N, D] unit vectors. Returns [C, D] unit vectors: the
  mean over templates of each class's prompt embeddings, renormalised."""
  prompts = [prompt(t, c) for c in classnames for t in templates]
  z = embed_text(prompts).reshape(len(classnames), len(templates), -1).mean(axis=1)
  with np.errstate(invalid="ignore"):
    return z / np.linalg.norm(z, axis=1, keepdims=True)


def accuracy(image_embeddings, class_emb, labels, ks=(1, 5)) -> dict:
  """image_embeddings [N, D], class_emb [C, D], labels [N] -> {"top1": .., "top5": ..}."""
  s = retrieval.scores(image_embeddings, class_emb)
  ranking = np.argsort(-s, axis=1)
  found = np.isfinite(s[np.arange(len(labels)), labels])
  out = {}
  for k in ks:
    if k <= class_emb.shape[0]:
      hit = np.any(ranking[:, :k] == labels[:, None], axis=1)
      out[f"top{k}"] = float(np.mean(found & hit))
  return out
