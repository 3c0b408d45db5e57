"""Field declarations: types, choices, ranges and typo hints, each from one declaration."""

import pytest

from xmodal import fields
from xmodal.fields import ConfigError, Field


@pytest.mark.parametrize("field, value, message", [
    (Field(0.9, "", ge=0, lt=1), 1.0, "config.x: must be in [0, 1), got 1.0"),
    (Field(0.9, "", ge=0, lt=1), -0.1, "config.x: must be in [0, 1), got -0.1"),
    (Field(1, "", gt=0), 0, "config.x: must be > 0, got 0"),
    (Field(1e-6, "", ge=0), -1e-9, "config.x: must be >= 0, got -1e-09"),
    (Field((0.8, 1.0), "", gt=0, le=1), (0.5, 1.5), "config.x: must be in (0, 1], got (0.5, 1.5)"),
    (Field("a", "", choices=("a", "b")), "c", "config.x: 'c' is not one of ('a', 'b')"),
    (Field("a", "", choices=lambda: ("a", "z")), "b", "config.x: 'b' is not one of ('a', 'z')"),
    (Field(3, ""), 3.5, "config.x: expected int, got float (3.5)"),
    (Field(True, ""), 1, "config.x: expected bool, got int (1)"),
    (Field((), ""), "image/.*", "config.x: expected tuple, got str ('image/.*')"),
])
def test_bad_values_are_named(field, value, message):
  with pytest.raises(ConfigError) as err:
    field.check("x", value)
  assert str(err.value) == message


@pytest.mark.parametrize("field, value", [
    (Field(0.9, "", ge=0, lt=1), 0.0),
    (Field(2.0, "", gt=0), 3),            # an int where a float is declared
    (Field((0.8, 1.0), "", gt=0, le=1), [0.1, 1.0]),
    (Field("a", "", choices=lambda: ("a", "z")), "z"),
    (Field(-1, "", ge=-1), -1),
])
def test_good_values_pass(field, value):
  field.check("x", value)


def test_unknown_key_suggests_the_closest():
  schema = {"optim": {"lr": Field(1.0, ""), "warmup_steps": Field(0, "")}}
  with pytest.raises(ConfigError, match=r"^config.optim.warmpu_steps: unknown key; did you "
                                        r"mean config.optim.warmup_steps\?"):
    fields.check({"optim": {"warmpu_steps": 3}}, schema)
  with pytest.raises(ConfigError, match=r"^config.optim: expected a section"):
    fields.check({"optim": 3}, schema)


def test_defaults_and_reference_come_from_one_declaration():
  schema = {"a": Field(2, "two things", gt=0), "s": {"b": Field("x", "b's doc", choices=("x", "y"))}}
  config = fields.defaults(schema)
  assert config.a == 2 and config.s.b == "x"
  rows = fields.reference_rows(schema)
  assert rows == ["| `a` | `2` | > 0 | two things |", "| `s.b` | `'x'` | 'x', 'y' | b's doc |"]


def test_a_named_section_defaults_to_its_entries_and_must_be_a_section():
  import ml_collections
  schema = {"tasks": fields.Named("named tasks", default=lambda: {"a": {"kind": "x"}}),
            "size": Field(1, "", gt=0)}
  config = fields.defaults(schema)
  assert config.tasks.a.kind == "x" and config.size == 1
  fields.check(ml_collections.ConfigDict({"tasks": {"anything": {"goes": 1}}}), schema)
  with pytest.raises(ConfigError, match=r"^config.tasks: expected a section of named entries"):
    fields.check(ml_collections.ConfigDict({"tasks": 3}), schema)
  assert fields.reference_rows(schema)[0] == "| `tasks` | a | named sections | named tasks |"
