"""Source kinds as modules (xmodal/data/source_kinds): the registry is the list of
data.source values, every module exports the contract, and each checks its own fields."""

import pytest

from xmodal import config as config_lib, default_config
from xmodal.data import pipeline, source_kinds
from data_fixtures import data_config


def test_registry_is_the_list_of_sources():
  assert source_kinds.kinds() == ("arrayrecord", "features", "h5ad", "manifest", "shapes",
                                  "synthetic", "tfds", "webdataset")
  assert default_config.SCHEMA["data"]["source"].allowed() == source_kinds.kinds() + (
      "mixture",)
  for kind in source_kinds.kinds():
    module = source_kinds.get(kind)
    assert all(hasattr(module, name) for name in ("where", "check", "open", "READY",
                                                   "MIXABLE")), kind
  assert pipeline.READY_SOURCES == ("features", "synthetic")
  assert "shapes" not in pipeline.SOURCE_KINDS and "webdataset" in pipeline.SOURCE_KINDS


@pytest.mark.parametrize("kind", ["webdataset", "arrayrecord", "h5ad", "features", "manifest"])
def test_file_kinds_name_the_missing_field(kind, tmp_path):
  config = data_config(source=kind, train_files=str(tmp_path / "nothing-*.x"))
  with pytest.raises(config_lib.ConfigError, match=r"config.data.train_files: no file matches"):
    config_lib.validate(config, 1)
  config = data_config(source=kind)
  with pytest.raises(config_lib.ConfigError, match=rf"config.data.train_files: required when "
                                                   rf"the train data is '{kind}'"):
    config_lib.validate(config, 1)


def test_mixture_entries_are_checked_by_their_kind(tmp_path):
  config = data_config(source="mixture", mixture=f"webdataset:{tmp_path}/none.tar@1",
                       eval_source="shapes")
  with pytest.raises(config_lib.ConfigError, match=r"config.data.mixture: no file matches"):
    config_lib.validate(config, 1)
  config.data.mixture = "shapes:x@1"
  with pytest.raises(config_lib.ConfigError, match=r"config.data.mixture: .*KIND in"):
    config_lib.validate(config, 1)
