"""Fixtures shared by the curation tests."""
from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def cluster():
    """A local 2-CPU Ray cluster for the module (kept if one is already running)."""
    ray = pytest.importorskip("ray")
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    if started:
        ray.shutdown()
