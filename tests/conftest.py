from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster import Cluster


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    """A running workflowd on a free loopback port with its own SQLite file; no agents yet."""
    cluster = Cluster(tmp_path)
    cluster.start_daemon()
    yield cluster
    cluster.close()


@pytest.fixture
def make_cluster(tmp_path: Path) -> Iterator:
    """Start a workflowd with chosen options; every cluster made is torn down."""
    made: list[Cluster] = []

    def make(*daemon_args: str) -> Cluster:
        cluster = Cluster(tmp_path / f"cluster-{len(made)}")
        cluster.root.mkdir()
        made.append(cluster)
        cluster.start_daemon(*daemon_args)
        return cluster

    yield make
    for cluster in made:
        cluster.close()


@pytest.fixture
def write_flow(tmp_path: Path):
    """Write a workflow definition to a file and return its path."""
    counter = iter(range(1_000_000))

    def write(text: str, name: str = "") -> Path:
        path = tmp_path / (name or f"flow-{next(counter)}.yaml")
        path.write_text(text)
        return path

    return write
