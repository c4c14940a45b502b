from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster import Cluster
from tests.mongo import (
    EXTERNAL_URI_ENV,
    SecantusServer,
    drop_database,
    unique_database,
    with_database,
)


@pytest.fixture
def cluster(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Cluster]:
    """A running workflowd on a free loopback port with its own SQLite file; no agents yet.

    Parametrised indirectly with "mongodb", its store is a MongoDB database of its own.
    """
    store = getattr(request, "param", "sqlite")
    cluster = Cluster(
        tmp_path, store_uri=request.getfixturevalue("mongo_uri") if store == "mongodb" else ""
    )
    cluster.start_daemon()
    yield cluster
    cluster.close()


@pytest.fixture
def make_cluster(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator:
    """Start a workflowd with chosen options; every cluster made is torn down.

    Parametrised indirectly with "mongodb", each cluster keeps its state in a
    MongoDB database of its own.
    """
    made: list[Cluster] = []
    on_mongo = getattr(request, "param", "sqlite") == "mongodb"

    def make(*daemon_args: str) -> Cluster:
        store_uri = request.getfixturevalue("mongo_uri") if on_mongo else ""
        cluster = Cluster(tmp_path / f"cluster-{len(made)}", store_uri=store_uri)
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


@pytest.fixture(scope="session")
def mongo_base_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A MongoDB server for the whole session: WORKFLOW_TEST_MONGO_URI, else secantusd-py."""
    external = os.environ.get(EXTERNAL_URI_ENV)
    if external:
        yield external
        return
    server = SecantusServer(tmp_path_factory.mktemp("secantus"))
    server.start()
    yield f"mongodb://{server.address}/"
    server.stop()


@pytest.fixture
def mongo_uri(mongo_base_uri: str) -> Iterator[str]:
    """The URI of a database of this test's own, dropped afterwards."""
    uri = with_database(mongo_base_uri, unique_database())
    yield uri
    drop_database(uri)
