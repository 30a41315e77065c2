"""One local Ray (``num_cpus=2``) for all the executor tests in this folder: started by the first
test that asks for it, shut down after the last."""
from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="package")
def ray_cluster():
    ray = pytest.importorskip("ray", reason="Ray tests need the ray extra: pip install 'ctxflow[ray]'")
    os.environ.setdefault("RAY_worker_niceness", "0")  # as RayExecutor does for a local Ray: actors at normal priority
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=128 << 20)
    yield ray
    ray.shutdown()
