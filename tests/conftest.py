"""Test session setup: 8 simulated CPU devices (set before JAX starts) and small configs."""

import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest  # noqa: E402

from tiny import make_tiny_config  # noqa: E402,F401


@pytest.fixture
def tiny_config():
  return make_tiny_config
