"""What the file-pattern kinds share: where a split's pattern is, and its check."""

from xmodal.fields import ConfigError


def where(config, split: str) -> tuple[str, str]:
  if split == "train":
    return "data.train_files", config.data.train_files
  return "data.eval_files", config.data.eval_files


def check(field: str, pattern: str, kind: str, split: str) -> None:
  from xmodal.data import sources   # noqa: PLC0415
  if not pattern:
    raise ConfigError(f"config.{field}: required when the {split} data is {kind!r}")
  try:
    sources.expand_pattern(pattern)
  except sources.SourceError as e:
    raise ConfigError(f"config.{field}: {e}") from None
