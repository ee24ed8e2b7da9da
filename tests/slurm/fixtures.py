"""pytest fixtures for the private SLURM cluster of tests/slurm/cluster.py.

Import them into a conftest (or a test module):

    from slurm.fixtures import slurm_activated, slurm_cluster  # noqa: F401  (tests/ is on sys.path)

``slurm_cluster`` (session): a started SlurmCluster, stopped at the end of the session. Several definitions of it
(e.g. imported both into tests/conftest.py and a test module) share one cluster per pytest session.
``slurm_activated`` (function): the same cluster with os.environ pointed at it for the test (submitit needs this).

Without root or without the SLURM packages the fixtures skip the test (install them with ``.ci/install-slurm``);
set ABLATE_REQUIRE_SLURM=1 to make that an error instead, e.g. in CI.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from .cluster import SlurmCluster, missing_binaries

_ATTR = "_ablate_slurm_cluster"  # on pytest's Config: [cluster, users], shared by every copy of the fixture


def slurm_unavailable_reason() -> str | None:
    """Why a cluster cannot start here, or None."""
    if os.name != "posix" or os.geteuid() != 0:
        return "the SLURM test cluster runs its daemons as root"
    missing = missing_binaries()
    if missing:
        return f"SLURM is not installed (missing {', '.join(missing)}): run .ci/install-slurm"
    return None


@pytest.fixture(scope="session")
def slurm_cluster(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlurmCluster]:
    config = request.config
    holder = getattr(config, _ATTR, None)
    if holder is None:
        reason = slurm_unavailable_reason()
        if reason is not None:
            if os.environ.get("ABLATE_REQUIRE_SLURM") == "1":
                pytest.fail(reason)
            pytest.skip(reason)
        cluster = SlurmCluster(tmp_path_factory.mktemp("slurm"))
        cluster.start()
        holder = [cluster, 0]
        setattr(config, _ATTR, holder)
    holder[1] += 1
    try:
        yield holder[0]
    finally:
        holder[1] -= 1
        if holder[1] == 0:
            delattr(config, _ATTR)
            holder[0].stop()


@pytest.fixture
def slurm_activated(slurm_cluster: SlurmCluster) -> Iterator[SlurmCluster]:
    with slurm_cluster.activated():
        yield slurm_cluster
