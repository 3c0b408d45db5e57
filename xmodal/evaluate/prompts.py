"""Zero-shot prompts as data: the ImageNet-1k class names and the prompt templates that CLIP
and SigLIP were evaluated with ("{}" = the class name, as in `config.eval.templates`).

  IMAGENET_CLASSNAMES   1,000 names in label order (imagenet_classnames.txt, one a line, so
                        the file also works as `--config.eval.classnames`): the names
                        OpenAI chose for CLIP's zero-shot evaluation ("tench", "goldfish",
                        ...), which open_clip and big_vision use too.
  TEMPLATES             {"openai_imagenet": the 80 templates of CLIP's ImageNet
                        evaluation, "openai_imagenet_7": the 7 of them CLIP's authors found
                        to ensemble best, "siglip": the form big_vision evaluates SigLIP
                        with: the 80 plus the bare class name, `canonicalize`d} (templates.json
                        holds the two OpenAI lists; "siglip" is derived from them).

  DATASETS              the class names and templates of the 26 other datasets CLIP was
                        evaluated on zero-shot ("cifar10", "food101", "fer2013", ...; and
                        "imagenet"): `dataset_prompts(name)` -> (class names, templates).
                        From clip_datasets.json, OpenAI's data/prompts.md (MIT licence) as
                        data; the names are in the label order CLIP used, which need not be
                        your copy's (check it before trusting a number). A class may have
                        several names (fer2013): its prompts are averaged over all of them.

big_vision also canonicalizes the class names for SigLIP:
`[canonicalize(c, keep=",") for c in IMAGENET_CLASSNAMES]`.
"""

import functools
import json
import os
import re
import string

_HERE = os.path.dirname(os.path.abspath(__file__))


def canonicalize(text: str, keep: str = "{}") -> str:
  """big_vision's canonical prompt text: "_" -> " ", punctuation removed except the exact
  string `keep`, lowercased, whitespace runs collapsed. "A photo of the {}." -> "a photo of
  the {}"."""
  drop = str.maketrans("", "", string.punctuation)
  text = keep.join(part.translate(drop) for part in text.replace("_", " ").split(keep))
  return re.sub(r"\s+", " ", text.lower()).strip()


@functools.lru_cache(maxsize=None)
def _templates() -> dict[str, tuple[str, ...]]:
  with open(os.path.join(_HERE, "templates.json"), encoding="utf-8") as f:
    out = {name: tuple(items) for name, items in json.load(f).items()}
  out["siglip"] = tuple(canonicalize(t) for t in out["openai_imagenet"] + ("{}",))
  return out


def _classnames() -> tuple[str, ...]:
  with open(os.path.join(_HERE, "imagenet_classnames.txt"), encoding="utf-8") as f:
    return tuple(line.rstrip("\n") for line in f if line.strip())


@functools.lru_cache(maxsize=None)
def _datasets() -> dict:
  with open(os.path.join(_HERE, "clip_datasets.json"), encoding="utf-8") as f:
    return json.load(f)


def dataset_names() -> tuple[str, ...]:
  """Datasets with built-in class names and templates ("imagenet", "cifar10", ...)."""
  return ("imagenet",) + tuple(_datasets())


def dataset_prompts(name: str) -> tuple[tuple, tuple[str, ...]]:
  """(class names in label order, templates) of a dataset CLIP was evaluated on; a class
  name may be a tuple of synonyms."""
  if name == "imagenet":
    return IMAGENET_CLASSNAMES, OPENAI_IMAGENET_TEMPLATES
  if name not in _datasets():
    raise ValueError(f"no built-in prompts for {name!r}; known: {', '.join(dataset_names())}")
  entry = _datasets()[name]
  classes = tuple(tuple(c) if isinstance(c, list) else c for c in entry["classes"])
  return classes, tuple(entry["templates"])


IMAGENET_CLASSNAMES = _classnames()
IMAGENET_CLASSNAMES_FILE = os.path.join(_HERE, "imagenet_classnames.txt")
TEMPLATES = _templates()
OPENAI_IMAGENET_TEMPLATES = TEMPLATES["openai_imagenet"]
SIGLIP_TEMPLATES = TEMPLATES["siglip"]
