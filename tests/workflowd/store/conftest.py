from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest

from workflowd.store import Store, open_store

Run = Callable[[Coroutine[Any, Any, Any]], Any]


@pytest.fixture
def run() -> Iterator[Run]:
    """Run coroutines to completion on one event loop kept for the whole test."""
    with asyncio.Runner() as runner:
        yield runner.run


@pytest.fixture(params=["sqlite", "mongodb"])
def store_uri(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The URI of an empty store of each kind: a SQLite file, a MongoDB database."""
    if request.param == "sqlite":
        return f"sqlite://{tmp_path / 'workflowd.db'}"
    return request.getfixturevalue("mongo_uri")


@pytest.fixture
def open_one(store_uri: str, run: Run) -> Iterator[Callable[[], Store]]:
    """Open stores on the test's store URI; each one is closed afterwards."""
    opened: list[Store] = []

    def open_one() -> Store:
        store = open_store(store_uri, wait_s=30)
        run(store.open())
        opened.append(store)
        return store

    yield open_one
    for store in opened:
        run(store.close())


@pytest.fixture
def store(open_one: Callable[[], Store]) -> Store:
    """An open, empty store of each kind."""
    return open_one()
