"""State stores: one interface (`base.Store`), an embedded SQLite and a MongoDB implementation."""

from __future__ import annotations

from workflowd.errors import StoreError
from workflowd.store.base import AgentRecord, RunRecord, Store

MONGODB_SCHEMES = ("mongodb://", "mongodb+srv://")


def open_store(uri: str, wait_s: float = 0.0, exclusive: bool = False) -> Store:
    """A store for a URI: `mongodb://HOST/DB`, `sqlite:///PATH` or a plain file path.

    `wait_s` bounds how long a networked store waits at start-up for its
    database to answer; 0 waits for ever.
    """
    if uri.startswith(MONGODB_SCHEMES):
        # imported here: pymongo is loaded only by a daemon that uses it
        from workflowd.store.mongodb import MongoStore

        return MongoStore(uri, wait_s=wait_s)
    from workflowd.store.sqlite import SQLiteStore

    scheme, separator, _ = uri.partition("://")
    if separator and scheme != "sqlite":
        raise StoreError(
            f"unknown store {scheme}://; use sqlite:///PATH, a file path, or mongodb://HOST/DB"
        )
    return SQLiteStore(uri.removeprefix("sqlite://"), exclusive=exclusive)


def describe(uri: str) -> str:
    """The store URI as logs may show it: without a password."""
    if uri.startswith(MONGODB_SCHEMES):
        from workflowd.store.mongodb import redact

        return redact(uri)
    return uri


__all__ = ["AgentRecord", "RunRecord", "Store", "describe", "open_store"]
