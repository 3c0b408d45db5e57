"""SigLIP on the embedded shapes dataset: the default run with the sigmoid loss.

  xmodal train --config=configs/shapes_siglip.py --workdir=runs/shapes_siglip

Hardware: any; about 3 minutes on 2 CPU cores. Expected: held-out retrieval R@1 well above
chance (1/500), like the softmax default.
"""

from xmodal import default_config


def get_config(arg=None):
  del arg
  config = default_config.get_config()
  config.loss.name = "sigmoid"     # scale 10, bias -10 at init (SigLIP)
  return config
