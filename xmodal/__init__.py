"""xmodal: cross-modal contrastive pretraining in JAX/Flax.

Notebook entry point: `m = xmodal.load(workdir)`; `m.encode(image=..., text=[...])`.
"""

__version__ = "0.1.0"


def load(workdir: str, step: int | None = None, devices=None):
  """A trained run's config and params; see xmodal.notebook.load."""
  from xmodal import notebook
  return notebook.load(workdir, step, devices)
