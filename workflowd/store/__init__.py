"""State stores: one interface (`base.Store`), an embedded SQLite implementation."""

from __future__ import annotations

from workflowd.store.base import AgentRecord, RunRecord, Store


def open_store(uri: str) -> Store:
    """A store for a URI: `sqlite:///PATH` or a plain file path."""
    if uri.startswith("mongodb://") or uri.startswith("mongodb+srv://"):
        # TODO: the MongoDB store is not built yet; only SQLite is available.
        raise ValueError("the MongoDB store is not available in this version; use sqlite:///PATH")
    from workflowd.store.sqlite import SQLiteStore

    return SQLiteStore(uri.removeprefix("sqlite://"))


__all__ = ["AgentRecord", "RunRecord", "Store", "open_store"]
