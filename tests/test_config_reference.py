"""docs/config.md is generated from the field declarations and kept in step with them."""

from xmodal import config_reference, default_config, fields


def test_committed_reference_is_current():
  with open(config_reference.PATH, encoding="utf-8") as f:
    committed = f.read()
  assert committed == config_reference.render(), (
      "docs/config.md is stale: run `python -m xmodal.config_reference`")


def test_every_field_is_documented():
  text = config_reference.render()
  for key in fields.flat(default_config.SCHEMA):
    assert f"`{key}`" in text
  for kind in default_config.tower_kinds():
    for key, field in default_config.tower_fields(kind).items():
      assert f"`towers.NAME.{key}`" in text
      assert field.doc, f"towers kind {kind}: field {key} has no doc"
