"""Test configuration: 8 forced CPU devices, precision fixture, hypothesis."""

import os

# Must happen before jax is imported anywhere in the test process.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import jax
import pytest
from hypothesis import settings

settings.register_profile("normopt", deadline=None, max_examples=60,
                          derandomize=True)
settings.load_profile("normopt")


@pytest.fixture(params=["float32", "float64"])
def precision(request):
  """Runs a test in float32 (rtol 1e-5) and with x64 on (rtol 1e-12)."""
  if request.param == "float64":
    with jax.enable_x64(True):
      yield request.param
  else:
    yield request.param
