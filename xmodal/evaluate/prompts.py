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


IMAGENET_CLASSNAMES = _classnames()
IMAGENET_CLASSNAMES_FILE = os.path.join(_HERE, "imagenet_classnames.txt")
TEMPLATES = _templates()
OPENAI_IMAGENET_TEMPLATES = TEMPLATES["openai_imagenet"]
SIGLIP_TEMPLATES = TEMPLATES["siglip"]
