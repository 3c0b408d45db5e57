"""xmodal: cross-modal contrastive pretraining in JAX/Flax.

Notebook API (xmodal/notebook.py):
  m = xmodal.load("runs/x")                     # a run, or converted weights
  m.encode(image=images, text=["a dog"])        # {modality: [N, D] unit vectors}
  tok = xmodal.get_tokenizer("runs/x")          # tok(["a dog"]) -> int32 [N, L]
  W = xmodal.zero_shot_classifier(m, xmodal.IMAGENET_CLASSNAMES,
                                  xmodal.OPENAI_IMAGENET_TEMPLATES)   # [D, C]
Prompt data (xmodal/evaluate/prompts.py): IMAGENET_CLASSNAMES, OPENAI_IMAGENET_TEMPLATES,
SIGLIP_TEMPLATES, TEMPLATES (by name).
"""

__version__ = "0.1.0"
_PROMPT_DATA = ("IMAGENET_CLASSNAMES", "OPENAI_IMAGENET_TEMPLATES", "SIGLIP_TEMPLATES",
                "TEMPLATES")
__all__ = ["load", "get_tokenizer", "zero_shot_classifier", *_PROMPT_DATA]


def __getattr__(name):
  # Lazily: `import xmodal` stays light (the evaluate package imports the data pipeline).
  if name in _PROMPT_DATA:
    from xmodal.evaluate import prompts
    return getattr(prompts, name)
  raise AttributeError(f"module 'xmodal' has no attribute {name!r}")


def __dir__():
  return sorted(set(globals()) | set(__all__))


def load(path: str, step: int | None = None, devices=None, tokenizer: str | None = None):
  """A trained run (its directory) or converted weights (the folder tools/convert_weights.py
  wrote, or its params.safetensors); see xmodal.notebook.load."""
  from xmodal import notebook
  return notebook.load(path, step, devices, tokenizer)


def get_tokenizer(name_or_path="bytes", context_length: int | None = None,
                  lowercase: bool = False):
  """A tokenizer by name ("bytes"), file, run directory, config or loaded model; called as
  `tok(["a dog"])` -> int32 [N, L]. See xmodal.notebook.get_tokenizer."""
  from xmodal import notebook
  return notebook.get_tokenizer(name_or_path, context_length, lowercase)


def zero_shot_classifier(model, classnames, templates, modality: str | None = None):
  """[D, C] unit class embeddings (prompts averaged per class), as open_clip's
  build_zero_shot_classifier; see xmodal.notebook.zero_shot_classifier."""
  from xmodal import notebook
  return notebook.zero_shot_classifier(model, classnames, templates, modality)
