"""docs/config.md and docs/objectives.md, generated from the declared fields and the
objective modules: `python -m xmodal.config_reference`.

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
  out += _per_kind("kind", default_config.tower_kinds(), default_config.tower_fields,
                   "towers.NAME.")
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
  out += _per_kind("kind", kinds.names(), lambda k: kinds.get(k).FIELDS, "eval.tasks.NAME.")
  from xmodal.losses import objectives, terms   # noqa: PLC0415 (imports jax)
  out += ["## Loss terms", "",
          "`config.loss.terms` maps each term's name to a section: the fields every term has, "
          "then its objective's options (formulas and papers: "
          "[objectives.md](objectives.md)). A config file creates terms "
          "(`config.loss.terms.distill = terms.section(\"distill\", teacher=\"t_image:t_text\")`); "
          "then `--config.loss.terms.distill.weight=0.5` overrides a field.", "",
          "### every term", "", *_TABLE, *fields.reference_rows(terms.COMMON, "loss.terms.NAME."),
          ""]
  with_options = [n for n in objectives.names() if objectives.get(n).FIELDS]
  out += _per_kind("objective", with_options, lambda n: objectives.get(n).FIELDS,
                   "loss.terms.NAME.")
  return "\n".join(out)


def _per_kind(label: str, names, fields_of, prefix: str) -> list[str]:
  """One "### <label> `name`" table per registered module (tower kinds, task kinds,
  objectives), from the fields it declares."""
  out = []
  for name in names:
    out += [f"### {label} `{name}`", "", *_TABLE, *fields.reference_rows(fields_of(name), prefix),
            ""]
  return out


OBJECTIVES_PATH = os.path.join(os.path.dirname(PATH), "objectives.md")

_OBJECTIVES_HEADER = """# Objectives

Every contrastive objective in xmodal is one module of `xmodal/losses/objectives/`, written
once as the math of one tile: a **score** of a block of rows against a block of columns and
a **target** for each score (`xmodal/losses/engine.py`). The three drivers run every
objective, equal to each other in value and gradients (tests/test_engine.py loops over the
registry, on 1, 2 and 8 devices, with group ids, K captions per image and queues):

| driver (`loss.impl`) | what one device holds | how |
|---|---|---|
| `dense` | everything | the reference, on one device |
| `gathered` | the gathered [B, D] columns and one [b, tile] tile | all-gathers the columns inside `shard_map`, then scores its rows against them tile by tile with the ring's statistics and custom VJP |
| `ring` | a few [b, D] blocks and one [b, tile] tile | columns travel round the devices (`ppermute`), tile by tile, with per-row running statistics and a recomputing custom VJP that pulls dL/dscores back through `jax.vjp` of the score |

Softmax targets are a mixture of components, each a distribution given by weights or
log-weights per tile and a mass; each streams in one pass with O(1) numbers per row and per
travelling column (running max and normaliser of the scores; per component its running
normaliser, its target-weighted sum of the scores and, for log-weights such as a teacher's
logits, their running max). Sigmoid targets are labels in [0, 1] per pair, each pair's term
computed on its own. Columns carry metadata (ids, reference or teacher embeddings, mixing
partners and weights) that travel with them.

The loss is `loss.terms`: weighted terms, each an objective over tower pairs with its own
or the shared learnable scale (`docs/config.md`, "Loss terms"); `loss.name` alone is the
one-term case. Every objective also takes, through the batch: group ids (rows of one record
are positives of each other, `data.captions="all"`), K captions per image without
repeating the image (`data.captions="k"`: a tower embeds [B, K] inputs, each image row's
positives are its K captions, each caption's its image), and, for softmax objectives, a
feature queue (`loss.terms.<term>.queue`, MoCo/ALBEF) of earlier columns as extra
negatives, kept in the train state (each device a FIFO of its own rows) and checkpointed.
EMA copies of towers (momentum distillation) live in the train state too; both restore
exactly on resume, and work with GradCache (`train.microbatches`), FSDP/TP meshes and
several processes.

```python
from xmodal.losses import terms
config.loss.terms = ml_collections.ConfigDict({
    "clip": terms.section("softmax"),
    "distill": terms.section("distill", weight=1.0, teacher="t_image:t_text")})
```

Objectives over more than a pair of towers (`binding`, `symile`, `gram`, `mv_infonce`,
`mv_dhel`: module attribute `GROUP`) take groups of towers as their term's `pairs`
(`pairs=("image:audio:text",)`; by default one group of every tower) and return several
driver calls of their one score (Symile's anchors in turn, binding's pairs, MV-DHEL's
views), each logged as `loss/<term>/<group>/<part>`, plus a part computed where each
example's rows live (a positive's own score): `xmodal/losses/groups.py`. Each is covered
by the registry's driver-equivalence test with three towers.

Adding an objective: a module with `FAMILY`, `INIT`, `FIELDS`, `contrast(opts, pair)`,
`blocks(opts, ctx, a, b)` (see `xmodal/losses/objectives/__init__.py`), plus its reference
test; the config's choices, this page and the driver-equivalence tests pick it up.

| objective | family | learnable scalars at init | options (defaults) |
|---|---|---|---|
"""


def render_objectives() -> str:
  """docs/objectives.md: the engine, then each objective's docstring and options."""
  from xmodal.losses import objectives   # noqa: PLC0415
  out = [_OBJECTIVES_HEADER.rstrip("\n")]
  for name in objectives.names():
    m = objectives.get(name)
    scale, bias = m.INIT
    init = f"scale {scale:.4g}" + ("" if bias is None else f", bias {bias:g}")
    opts = ", ".join(f"`{k}`={f.default!r}" for k, f in m.FIELDS.items()) or "none"
    out.append(f"| [`{name}`](#{name}) | {m.FAMILY} | {init} | {opts} |")
  for name in objectives.names():
    m = objectives.get(name)
    doc = (m.__doc__ or "").strip().split("\n")
    out += ["", f"## {name}", "", f"**{doc[0]}**", "", "```", *[line for line in doc[2:]], "```",
            "", f"Drivers: dense, gathered, ring. Term: `terms.section(\"{name}\", "
            + ('pairs=("a:b:c",), ...)`: a group of towers.' if getattr(m, "GROUP", False)
               else '...)`.'), ""]
    if m.FIELDS:
      out += _TABLE + fields.reference_rows(m.FIELDS, "loss.terms.NAME.")
  return "\n".join(out) + "\n"


def main(argv=None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  path = argv[0] if argv else PATH
  with open(path, "w", encoding="utf-8") as f:
    f.write(render())
  print(f"wrote {path}")
  objectives_path = argv[1] if len(argv) > 1 else OBJECTIVES_PATH
  with open(objectives_path, "w", encoding="utf-8") as f:
    f.write(render_objectives())
  print(f"wrote {objectives_path}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
