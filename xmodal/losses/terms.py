"""`loss.terms`: the loss as weighted terms, each an objective over some tower pairs.

    config.loss.terms.clip = terms.section("softmax")
    config.loss.terms.distill = terms.section("distill", weight=1.0, teacher="t_image:t_text")

A term names its `objective` (a module of xmodal/losses/objectives), its `weight`, the
tower `pairs` it spans (empty: `loss.pairs`, i.e. every pair of towers; a group objective's
entries are groups 'a:b:c', by default one group of those towers: losses/groups.py), whether it uses
the model's shared learnable `logit_scale` / `logit_bias` or its own
(`logit_scale_<term>`, `logit_bias_<term>`), an optional feature `queue`, and the
objective's own options (its `FIELDS`, with the paper's defaults). The loss is
sum_term weight * mean over the term's pairs. With `loss.terms` empty the loss is the one
term `loss.name` over `loss.pairs`, as in configs written before terms existed.

Terms are ConfigDict entries keyed by the term's name (ml_collections cannot override
lists from the command line): a config file creates them, and then any option can be
overridden, e.g. `--config.loss.terms.distill.weight=0.5`. `parse("softmax + 0.5*distill")`
builds terms from a string (configs/terms.py takes one as its argument).
"""

import dataclasses
import math
import re

import ml_collections

from xmodal import config as config_lib, fields
from xmodal.fields import ConfigError, Field
from xmodal.losses import families, groups, objectives

COMMON = dict(
    objective=Field("softmax", "the objective: a module of xmodal/losses/objectives",
                    choices=objectives.names),
    weight=Field(1.0, "weight of this term in the loss", ge=0),
    pairs=Field((), "('a:b', ...) tower pairs; empty = loss.pairs (every pair of towers)"),
    scale=Field("shared", "'shared': the model's logit_scale (and logit_bias); 'own': this "
                "term's logit_scale_<term> (and logit_bias_<term>)", choices=("shared", "own")),
    init_scale=Field(0.0, "own scale at initialisation; 0 = the objective's default", ge=0),
    init_bias=Field(0.0, "own bias at initialisation (sigmoid family); 0 = the objective's "
                    "default"),
    queue=Field(0, "MoCo/ALBEF feature queue: columns of this many earlier examples join "
                "each direction's negatives (a multiple of batch_size); 0 = none", ge=0),
)


def term_fields(objective: str) -> dict:
  """The declared fields of a term of `objective`: the common ones and its options."""
  return {**COMMON, **objectives.get(objective).FIELDS}


def section(objective: str, /, **overrides) -> ml_collections.ConfigDict:
  """A term section at its defaults, with `overrides` applied."""
  overrides.pop("objective", None)
  out = fields.defaults(term_fields(objective))
  out.objective = objective
  out.update(overrides)
  return out


@dataclasses.dataclass(frozen=True)
class Term:
  """A resolved term: its objective module and options (the objective's fields only)."""
  name: str
  objective: str
  opts: ml_collections.ConfigDict
  weight: float
  pairs: tuple
  scale: str
  init: tuple
  queue: int

  @property
  def module(self):
    return objectives.get(self.objective)

  @property
  def family(self) -> str:
    return self.module.FAMILY

  def param_names(self) -> tuple[str, str]:
    """(scale param, bias param) this term reads."""
    if self.scale == "shared":
      return "logit_scale", "logit_bias"
    return f"logit_scale_{self.name}", f"logit_bias_{self.name}"

  def needs(self, *towers: str) -> dict:
    out = {"towers": (), "batch": (), "ema": ()}
    if hasattr(self.module, "needs"):
      out.update(self.module.needs(self.opts, *towers))
    return out


def one_term(config) -> bool:
  return not config.loss.get("terms")


def resolve(config) -> list[Term]:
  """The config's terms, with defaults filled in (the one-term case from loss.name)."""
  pairs = tuple(config_lib.default_pairs(config))
  raw = (section(config.loss.name) if one_term(config) else None)
  entries = {config.loss.name: raw} if raw is not None else dict(config.loss.terms.items())
  out = []
  for name, entry in entries.items():
    objective = entry.get("objective", COMMON["objective"].default)
    full = section(objective, **{k: v for k, v in entry.items()})
    own = objectives.get(objective).FIELDS
    opts = ml_collections.ConfigDict({k: full[k] for k in own})
    term_pairs = tuple(tuple(p.split(":")) for p in full.pairs) or (
        _one_group(pairs) if groups.is_group(objectives.get(objective)) else pairs)
    scale, bias = objectives.get(objective).INIT
    if raw is not None or full.scale == "shared":
      init = (config.loss.init_scale or scale, config.loss.init_bias or bias)
    else:
      init = (full.init_scale or scale, full.init_bias or bias)
    out.append(Term(name, objective, opts, float(full.weight), term_pairs, full.scale,
                    init, int(full.queue)))
  return out


def _one_group(pairs) -> tuple:
  """A group objective's default: one group of every tower of the pairs, in order."""
  towers = []
  for p in pairs:
    towers += [t for t in p if t not in towers]
  return (tuple(towers),)


def scalars(config) -> dict[str, float]:
  """{param name: initial value} of the loss's learnable scalars: log-scales and biases.
  The shared ones take their initial values from the first term that uses them (or
  loss.init_scale / loss.init_bias)."""
  out = {}
  for term in resolve(config):
    scale_name, bias_name = term.param_names()
    scale, bias = term.init
    out.setdefault(scale_name, math.log(scale))
    if term.family == families.SIGMOID:
      out.setdefault(bias_name, bias)
  if "logit_scale" not in out:           # towers' similarity() and old tools read it
    out["logit_scale"] = math.log(config.loss.init_scale or objectives.get("softmax").INIT[0])
  return out


def parse(spec: str) -> ml_collections.ConfigDict:
  """'softmax + 0.5*distill + 0.2*cwcl' -> loss.terms sections (name = objective; a second
  term of one objective is named objective_2, ...)."""
  out = ml_collections.ConfigDict()
  for part in (p.strip() for p in spec.split("+")):
    m = re.fullmatch(r"(?:([0-9.eE+-]+)\s*\*\s*)?([a-z_0-9]+)", part)
    if not m or m.group(2) not in objectives.names():
      raise ConfigError(f"config.loss.terms: {part!r} in {spec!r} is not [WEIGHT*]OBJECTIVE "
                        f"with OBJECTIVE one of {objectives.names()}")
    name, i = m.group(2), 2
    while name in out:
      name, i = f"{m.group(2)}_{i}", i + 1
    out[name] = section(m.group(2), weight=float(m.group(1) or 1.0))
  return out


# ----------------------------------------------------------------------------- validation

def check(config) -> None:
  """Every term's fields and the rules between fields; raises ConfigError naming the field.
  Called by `config.validate`."""
  towers = config.towers
  student = [n for n, t in towers.items() if not t.get("input")]
  if not one_term(config) and config.loss.name != "softmax":
    raise ConfigError(f"config.loss.name: {config.loss.name!r} is not used when loss.terms "
                      f"is set; give each term its objective (loss.terms.<term>.objective)")
  for name, entry in (config.loss.terms.items() if not one_term(config) else []):
    where = f"loss.terms.{name}."
    if not isinstance(entry, ml_collections.ConfigDict):
      raise ConfigError(f"config.loss.terms.{name}: expected a term section, got {entry!r}")
    objective = entry.get("objective", COMMON["objective"].default)
    COMMON["objective"].check(f"{where}objective", objective)
    fields.check(entry, term_fields(objective), where)
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
      raise ConfigError(f"config.loss.terms.{name}: term names are identifiers (they name "
                        f"params and metrics)")
    for pair in entry.get("pairs", ()):
      module = objectives.get(objective)
      _check_pair(f"{where}pairs", pair, towers,
                  getattr(module, "MIN_TOWERS", 2) if groups.is_group(module) else 0)
  for term in resolve(config):
    where = "loss." if one_term(config) else f"loss.terms.{term.name}."
    if hasattr(term.module, "check"):        # first: it names the option that is wrong
      try:
        term.module.check(term.opts, config, where)
      except ConfigError as e:
        if not one_term(config):
          raise
        raise ConfigError(
            f"config.loss.name: {term.objective!r} at its defaults cannot run ({e}); declare "
            f"it as a term with its options, e.g. config.loss.terms.{term.objective} = "
            f"terms.section({term.objective!r}, ...)") from None
    for pair in term.pairs:
      if any(t in towers and towers[t].get("input") for t in pair):
        raise ConfigError(f"config.{where}pairs: {':'.join(pair)} spans a tower that reads "
                          f"another tower's input (a teacher); pairs are between student "
                          f"towers {student}")
      need = term.needs(*pair)
      for t in need["towers"] + need["ema"]:
        if t not in towers:
          raise ConfigError(f"config.{where[:-1]}: needs tower {t!r}, which is not in "
                            f"config.towers ({sorted(towers.keys())})")
    if term.queue:
      if groups.is_group(term.module) or getattr(term.module, "TOKENS", False):
        raise ConfigError(f"config.{where}queue: {term.objective!r} spans a group of towers "
                          f"or scores tokens; only pooled pair objectives take a queue")
      if term.family != families.SOFTMAX:
        raise ConfigError(f"config.{where}queue: only softmax-family objectives take a "
                          f"queue, {term.objective!r} is {term.family}")
      if term.queue % config.batch_size:
        raise ConfigError(f"config.{where}queue: {term.queue} is not a multiple of "
                          f"batch_size {config.batch_size}")
      if any(term.needs(a, b)["batch"] for a, b in term.pairs):
        raise ConfigError(f"config.{where}queue: not with teacher embeddings read from the "
                          f"batch (their size is known only from the data)")


def _check_pair(field, pair, towers, group=0):
  """group: 0 for a pair objective, else the least number of towers of a group."""
  parts = pair.split(":")
  bad = len(parts) < group if group else len(parts) != 2
  if bad or len(set(parts)) != len(parts) or any(p not in towers for p in parts):
    shape = ("'a:b' with two" if not group else "'a:b[:c...]' with two or more" if group == 2
             else "'a[:b...]' with one or more")
    raise ConfigError(f"config.{field}: {pair!r} must be {shape} different tower "
                      f"names from {sorted(towers.keys())}")
