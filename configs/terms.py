"""Any weighted sum of objectives, named on the command line.

  xmodal train --config='configs/terms.py:softmax + 0.5*mixup' --workdir=runs/terms
  xmodal train --config='configs/terms.py:softmax + 0.5*sigmoid' \\
      --config.loss.terms.sigmoid.scale=own --workdir=runs/terms2

The embedded default experiment (xmodal/default_config.py) with `loss.terms` parsed from
the argument (`xmodal.losses.terms.parse`: `[WEIGHT*]OBJECTIVE` joined by '+'; a second term
of one objective is named OBJECTIVE_2); once the terms exist, every field of each can be
overridden with --config.loss.terms.NAME.FIELD=VALUE. Objectives that need more towers
(cwcl's reference, distill's teachers) need a config file that adds them
(docs/objectives.md). Hardware: any; like the default run (about 3 minutes on 2 CPU cores).
"""

from xmodal import default_config
from xmodal.losses import terms


def get_config(arg=None):
  config = default_config.get_config()
  config.loss.terms = terms.parse(arg or "softmax + 0.5*mixup")
  return config
