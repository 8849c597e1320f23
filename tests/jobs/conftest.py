"""One local Ray instance and one job manager for the job tests (Ray starts in ~5 s; each test would pay it)."""
from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DEMO_V7 = ROOT / "models" / "demo-v7.pth"
DEMO_V6 = ROOT / "models" / "demo-v6.pth"


@pytest.fixture(scope="session")
def ray_local():
    ray = pytest.importorskip("ray")
    from rwkv_core.jobs.manager import ClusterSettings, start_ray

    started_here = not ray.is_initialized()
    start_ray(ClusterSettings())
    yield ray
    if started_here:
        ray.shutdown()


@pytest.fixture
def manager_factory(ray_local):
    """JobManager instances closed at the end of the test (their workers killed)."""
    from rwkv_core.jobs.manager import ClusterSettings, JobManager

    made = []

    def make(**kw):
        m = JobManager(ClusterSettings(**kw))
        made.append(m)
        return m

    yield make
    for m in made:
        m.close()
