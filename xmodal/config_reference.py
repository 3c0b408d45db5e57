"""docs/config.md, generated from the declared fields: `python -m xmodal.config_reference`.

The reference is never edited by hand: every key, default, allowed value or range and doc
comes from `xmodal/default_config.py` (and each tower kind's fields), and a test checks that
the committed file is what this prints.
"""

import os
import sys

from xmodal import default_config, fields

PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs",
                    "config.md")

_HEADER = """# Config reference

Every key an xmodal config may set, with its default, its allowed values or range, and what
it does. Generated from the field declarations in `xmodal/default_config.py` by
`python -m xmodal.config_reference`; do not edit by hand. Override any key on the command
line (`xmodal train --config.optim.lr=1e-3`) or in a config file (`configs/*.py`).
A value outside its choices or range, an unknown key (with the closest known one) or a
wrong type stops the run before anything compiles, naming the key.
"""

_TABLE = ["| key | default | allowed | what |", "|---|---|---|---|"]


def render() -> str:
  out = [_HEADER]
  towers = {k: v for k, v in default_config.SCHEMA.items() if isinstance(v, dict)}
  top = {k: v for k, v in default_config.SCHEMA.items() if not isinstance(v, dict)}
  out += ["## Run", "", *_TABLE, *fields.reference_rows(top), ""]
  for section, schema in towers.items():
    out += [f"## `{section}`", "", *_TABLE, *fields.reference_rows(schema, f"{section}."), ""]
  out += ["## Towers", "",
          "`config.towers` maps each modality name (the key used in batches and outputs) to a "
          "tower section; its `kind` picks the fields below. Override as "
          "`--config.towers.image.width=256`. A kind is a module of `xmodal/towers` or any "
          "module named by its path (`kind=\"mypkg.my_tower\"`), which declares its own "
          "fields.", ""]
  for kind in default_config.tower_kinds():
    out += [f"### kind `{kind}`", "", *_TABLE,
            *fields.reference_rows(default_config.tower_fields(kind), "towers.NAME."), ""]
  from xmodal.evaluate import kinds   # noqa: PLC0415
  out += ["## Evaluation tasks", "",
          "`config.eval.tasks` maps each task name (the first part of its metric names, "
          "`<task>/<metric>`) to a task section: the fields every task has, then its "
          "`kind`'s (xmodal/evaluate/kinds). A task's `data` section holds `config.data` "
          "keys that replace the run's for this task (`eval_source`, `eval_files`, "
          "`tfds_name`, `tfds_eval_split`, `caption_key`, ...; probes also read the "
          "training split: `train_files`, `tfds_train_split`); empty = the run's held-out "
          "split. Override as `--config.eval.tasks.zeroshot.templates=openai_imagenet`.", "",
          "### every task", "", *_TABLE,
          *fields.reference_rows(kinds.COMMON, "eval.tasks.NAME."),
          "| `eval.tasks.NAME.data` | `{}` | config.data keys | this task's data "
          "(above) |", ""]
  for kind in kinds.names():
    out += [f"### kind `{kind}`", "", *_TABLE,
            *fields.reference_rows(kinds.get(kind).FIELDS, "eval.tasks.NAME."), ""]
  return "\n".join(out)


def main(argv=None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  path = argv[0] if argv else PATH
  with open(path, "w", encoding="utf-8") as f:
    f.write(render())
  print(f"wrote {path}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
