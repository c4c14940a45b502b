"""The production store: MongoDB, through pymongo's asyncio client.

One database, the one the URI names (`workflowd` when it names none):

- `runs`: one document per run, `_id` the run id. Its `last_seq` and `status`
  follow the newest history batch; `runs_with_status` repairs them when a crash
  came between the two writes.
- `events`: the history, one document per appended batch (`first`..`last`), so
  that a batch lands whole or not at all without multi-document transactions,
  which a standalone mongod does not offer. Unique on (run_id, first) and on
  (run_id, last): no sequence number can be taken twice.
- `blobs`: event data too large to keep inline (a step's outputs, a long log
  line), in chunks of 1 MiB, referenced from the event.
- `agents`, `messages` (reserved for cross-step messages), and `meta`, which
  holds the schema version.

Inputs, config, event data, labels and plugin schemas are stored as JSON text:
they are the user's data, whose keys may start with `$` or hold dots, and whose
integers may not fit BSON's 64 bits. JSON keeps them exactly, as SQLite does.

Every write uses majority write concern with journaling, and every call to the
database runs under an explicit timeout. A call that fails because the database
is unreachable, stepping down or too slow is retried with jittered backoff
until it answers: the coordinator simply waits, and nothing it was told is
stored gets lost. A write whose outcome is unknown is retried with the same
identity and then verified: each batch carries a random token, so a retry that
finds its `_id` taken reads the batch back and knows whether it is its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import random
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import pymongo
import structlog
from bson.binary import Binary
from pymongo import AsyncMongoClient, UpdateOne, WriteConcern
from pymongo.errors import (
    BulkWriteError,
    ConnectionFailure,
    DuplicateKeyError,
    OperationFailure,
    PyMongoError,
)
from pymongo.read_concern import ReadConcern

from workflowd.engine import Event
from workflowd.errors import StoreError
from workflowd.events import RUN_FINISHED
from workflowd.store.base import AgentRecord, RunRecord, Store, now_ms

log = structlog.get_logger()

T = TypeVar("T")

SCHEMA_VERSION = 1
DEFAULT_DATABASE = "workflowd"
DEFAULT_TIMEOUT_S = 10.0

# Event data above this size is stored out of line, and so is the largest data
# of a batch until the batch's inline data fits the second limit: history
# documents stay small however large a step's outputs are.
INLINE_LIMIT_BYTES = 64 * 1024
BATCH_INLINE_LIMIT_BYTES = 1024 * 1024
CHUNK_BYTES = 1024 * 1024
READ_BATCHES = 100

# Appends that wait while one group is written go together in the next: one
# insert of their history batches and one update of their runs, this many at most.
MAX_GROUP = 500
DUPLICATE_KEY = 11000

MAX_BACKOFF_S = 5.0
PING_TIMEOUT_S = 2.0
UNAVAILABLE_LOG_INTERVAL_S = 30.0

# A run's status while `prune` removes its history: a crash half way leaves it
# findable, and the next prune finishes the job.
PRUNING = "pruning"

MAJORITY = WriteConcern(w="majority", j=True)
MAJORITY_READ = ReadConcern("majority")
LATEST_READ = ReadConcern("local")

# Server error codes that mean "not now" rather than "never": interrupted,
# shutting down, stepping down, not primary, time limit or write concern not met.
_TRANSIENT_CODES = frozenset(
    {6, 7, 50, 64, 89, 91, 189, 262, 9001, 10107, 11600, 11602, 13435, 13436}
)


def _transient(exc: BaseException) -> bool:
    """Whether the database may well answer if asked again later."""
    if isinstance(exc, ConnectionFailure):
        return True
    if not isinstance(exc, PyMongoError):
        return False
    if exc.timeout or exc.has_error_label("RetryableWriteError"):
        return True
    if isinstance(exc, BulkWriteError):
        return bool(exc.details.get("writeConcernErrors"))
    return isinstance(exc, OperationFailure) and exc.code in _TRANSIENT_CODES


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:300] or type(exc).__name__


def backoff_s(attempt: int) -> float:
    """Jittered exponential backoff: about 0.1 s at first, at most MAX_BACKOFF_S."""
    return random.uniform(0.5, 1.0) * min(MAX_BACKOFF_S, 0.1 * 2 ** min(attempt, 10))  # noqa: S311 - jitter, not secrecy


def redact(uri: str) -> str:
    """The URI without its password, for logs and error messages."""
    return re.sub(r"//([^/@:]*):[^/@]*@", r"//\1:***@", uri)


class StoreUnavailableError(StoreError):
    code = "store_unavailable"


def _run(doc: Mapping[str, Any]) -> RunRecord:
    return RunRecord(
        run_id=doc["_id"],
        name=doc["name"],
        source=doc["source"],
        filename=doc["filename"],
        inputs=json.loads(doc["inputs_json"]),
        config=json.loads(doc["config_json"]),
        status=doc["status"],
        created_ms=doc["created_ms"],
        updated_ms=doc["updated_ms"],
        idempotency_key=doc.get("idempotency_key", ""),
        last_seq=doc["last_seq"],
    )


def _agent(doc: Mapping[str, Any]) -> AgentRecord:
    return AgentRecord(
        name=doc["_id"],
        labels=json.loads(doc["labels_json"]),
        plugins=json.loads(doc["plugins_json"]),
        version=doc["version"],
        connected=doc["connected"],
        last_seen_ms=doc["last_seen_ms"],
    )


@dataclass
class _Append:
    """An append waiting for the next group: its batch goes after seq `after`."""

    run_id: str
    entries: list[dict[str, Any]]
    status: str
    after: int
    done: asyncio.Future[tuple[int, int]]  # the batch's first seq and time


def _batch_id(run_id: str, first: int) -> str:
    return f"{run_id}:{first:012d}"


class MongoStore(Store):
    def __init__(self, uri: str, wait_s: float = 0.0) -> None:
        """`wait_s` bounds how long `open` waits for the database; 0 waits for ever."""
        self.uri = uri
        self.wait_s = wait_s
        try:
            self._client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
                uri, appname="workflowd", tz_aware=False
            )
            db = self._client.get_default_database(DEFAULT_DATABASE)
        except (PyMongoError, ValueError, TypeError) as exc:
            raise StoreError(f"bad MongoDB store URI {redact(uri)}: {_one_line(exc)}") from None
        # timeoutMS in the URI sets the timeout of each call; else ours
        self.timeout_s = self._client.options.timeout or DEFAULT_TIMEOUT_S
        self.database = db.name
        options = {"write_concern": MAJORITY, "read_concern": MAJORITY_READ}
        self._db = db
        self._meta = db.get_collection("meta", **options)
        self._runs = db.get_collection("runs", **options)
        self._events = db.get_collection("events", **options)
        # The write path reads the primary's own latest data: a write that timed
        # out waiting for the majority is already there, and must be recognised
        # as ours rather than written again under another number.
        self._runs_latest = self._runs.with_options(read_concern=LATEST_READ)
        self._events_latest = self._events.with_options(read_concern=LATEST_READ)
        self._blobs = db.get_collection("blobs", **options)
        self._agents = db.get_collection("agents", **options)
        self._messages = db.get_collection("messages", **options)
        self._down_since: float | None = None
        self._down_logged = 0.0
        # group commit: appends waiting for the next group, and the task writing groups
        self._waiting: list[_Append] = []
        self._group_writer: asyncio.Task[None] | None = None
        # each run's last seq as this store wrote it: a wrong guess (another writer,
        # a crash between a batch and its run) is caught by the batch's unique _id
        self._last_seqs: dict[str, int] = {}

    # ------------------------------------------------------------ failures

    async def _retry(self, what: str, call: Callable[[], Awaitable[T]]) -> T:
        """Run one call to the database until it answers, each try under the timeout.

        `call` must be safe to repeat: it either is idempotent or verifies what an
        earlier try of it left behind.
        """
        # TODO: a daemon stopped during an outage waits here until the database
        # is back or systemd kills it; let shutdown end the calls still retrying.
        attempt = 0
        while True:
            try:
                with pymongo.timeout(self.timeout_s):
                    result = await call()
            except PyMongoError as exc:
                if not _transient(exc):
                    raise StoreError(f"MongoDB store: {what} failed: {_one_line(exc)}") from exc
                attempt += 1
                self._unavailable(what, exc)
                await asyncio.sleep(backoff_s(attempt))
                continue
            if self._down_since is not None:
                down_s = round(time.monotonic() - self._down_since, 1)
                self._down_since = None
                log.info("store_recovered", store="mongodb", down_s=down_s)
            return result

    def _unavailable(self, what: str, exc: BaseException) -> None:
        """Say that the database is gone once, then every so often while it stays gone."""
        now = time.monotonic()
        if self._down_since is None:
            self._down_since = now
        elif now - self._down_logged < UNAVAILABLE_LOG_INTERVAL_S:
            log.debug("store_retry", store="mongodb", op=what, error=_one_line(exc))
            return
        self._down_logged = now
        log.warning(
            "store_unavailable",
            store="mongodb",
            op=what,
            down_s=round(now - self._down_since, 1),
            error=_one_line(exc),
        )

    # ---------------------------------------------------------- life cycle

    async def open(self) -> None:
        """Wait for the database (with backoff, bounded by `wait_s`), then migrate."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.wait_s if self.wait_s > 0 else None
        attempt = 0
        while True:
            # a server that is down makes server selection wait out the whole
            # timeout: keep each try short, so that the log says what goes on
            try_s = min(self.timeout_s, PING_TIMEOUT_S)
            if deadline is not None:
                try_s = max(0.1, min(try_s, deadline - loop.time()))
            try:
                with pymongo.timeout(try_s):
                    await self._client.admin.command("ping")
                break
            except PyMongoError as exc:
                if not _transient(exc):
                    raise StoreError(
                        f"cannot use MongoDB store {redact(self.uri)}: {_one_line(exc)}"
                    ) from None
                attempt += 1
                if deadline is not None and loop.time() >= deadline:
                    raise StoreUnavailableError(
                        f"MongoDB store {redact(self.uri)} unreachable after {self.wait_s:g}s: "
                        f"{_one_line(exc)}"
                    ) from None
                delay = backoff_s(attempt)
                if deadline is not None:
                    delay = max(0.0, min(delay, deadline - loop.time()))
                log.warning(
                    "store_unavailable",
                    store=redact(self.uri),
                    attempt=attempt,
                    retry_in_s=round(delay, 2),
                    error=_one_line(exc),
                )
                await asyncio.sleep(delay)
        log.info("store_connected", store=redact(self.uri), database=self.database)
        await self._migrate()

    async def close(self) -> None:
        if self._group_writer is not None:
            # the appends under way end first: their callers are told how they went
            await asyncio.gather(self._group_writer, return_exceptions=True)
        await self._client.close()

    async def _migrate(self) -> None:
        """Bring the schema up to this version; refuse a newer one."""
        found_doc = await self._retry(
            "read_schema", lambda: self._meta.find_one({"_id": "schema"})
        )
        found = int(found_doc["version"]) if found_doc else 0
        if found > SCHEMA_VERSION:
            raise StoreError(
                f"MongoDB database {self.database} has schema version {found}, newer than "
                f"this workflowd understands ({SCHEMA_VERSION}); upgrade workflowd"
            )
        for version in range(found + 1, SCHEMA_VERSION + 1):
            await _MIGRATIONS[version](self)
            await self._retry(
                "write_schema",
                lambda version=version: self._meta.update_one(
                    {"_id": "schema"}, {"$max": {"version": version}}, upsert=True
                ),
            )
            log.info("store_migrated", database=self.database, schema_version=version)

    async def _schema_v1(self) -> None:
        indexes = {
            # run ids sort by creation time: this index pages `list`, newest first
            self._runs: [
                ([("run_id", -1)], {"name": "newest_first", "unique": True}),
                ([("status", 1), ("run_id", 1)], {"name": "by_status"}),
                ([("status", 1), ("updated_ms", 1)], {"name": "by_age"}),
                (
                    [("idempotency_key", 1)],
                    {"name": "idempotency_key", "unique": True, "sparse": True},
                ),
            ],
            self._events: [
                ([("run_id", 1), ("first", 1)], {"name": "run_seq", "unique": True}),
                ([("run_id", 1), ("last", 1)], {"name": "run_last", "unique": True}),
            ],
            self._blobs: [
                ([("blob", 1), ("n", 1)], {"name": "blob_chunks", "unique": True}),
                ([("run_id", 1)], {"name": "by_run"}),
            ],
            self._messages: [
                (
                    [("run_id", 1), ("topic", 1), ("seq", 1)],
                    {"name": "run_topic_seq", "unique": True},
                ),
            ],
        }
        for collection, specs in indexes.items():
            for keys, options in specs:
                await self._retry(
                    "create_index",
                    lambda c=collection, k=keys, o=options: c.create_index(k, **o),
                )

    # ------------------------------------------------------ out-of-line data

    async def _entries(self, run_id: str, events: Sequence[Event]) -> list[dict[str, Any]]:
        """History entries for events, their large data stored out of line first."""
        texts = [json.dumps(event.data).encode() for event in events]
        outside = {i for i, text in enumerate(texts) if len(text) > INLINE_LIMIT_BYTES}
        inline = sum(len(text) for i, text in enumerate(texts) if i not in outside)
        for i in sorted(range(len(texts)), key=lambda i: -len(texts[i])):
            if inline <= BATCH_INLINE_LIMIT_BYTES:
                break
            if i not in outside:
                outside.add(i)
                inline -= len(texts[i])
        entries = []
        for i, event in enumerate(events):
            entry: dict[str, Any] = {
                "type": event.type,
                "step_id": event.step_id,
                "attempt": event.attempt,
                "agent": event.agent,
            }
            if i in outside:
                entry["blob"] = await self._put_blob(run_id, texts[i])
            else:
                entry["data"] = texts[i].decode()
            entries.append(entry)
        return entries

    async def _put_blob(self, run_id: str, data: bytes) -> dict[str, Any]:
        blob_id = uuid.uuid4().hex
        chunks = 0
        for n, start in enumerate(range(0, len(data), CHUNK_BYTES)):
            doc = {
                "_id": f"{blob_id}:{n:06d}",
                "blob": blob_id,
                "run_id": run_id,
                "n": n,
                "data": Binary(data[start : start + CHUNK_BYTES]),
            }
            await self._retry("put_blob", lambda doc=doc: self._insert_chunk(doc))
            chunks = n + 1
        return {
            "id": blob_id,
            "bytes": len(data),
            "chunks": chunks,
            "sha256": hashlib.sha256(data).hexdigest(),
        }

    async def _insert_chunk(self, doc: dict[str, Any]) -> None:
        # blob ids are fresh and random: a duplicate is this chunk, from a try
        # whose answer was lost
        with contextlib.suppress(DuplicateKeyError):
            await self._blobs.insert_one(doc)

    async def _get_blob(self, run_id: str, seq: int, ref: Mapping[str, Any]) -> bytes:
        docs = await self._retry(
            "get_blob",
            lambda: self._blobs.find({"blob": ref["id"]}).sort("n", 1).to_list(None),
        )
        data = b"".join(bytes(doc["data"]) for doc in docs)
        if len(data) != ref["bytes"] or hashlib.sha256(data).hexdigest() != ref["sha256"]:
            raise StoreError(
                f"the stored data of run {run_id} event {seq} is damaged: "
                f"{len(docs)} of {ref['chunks']} chunks, {len(data)} of {ref['bytes']} bytes"
            )
        return data

    async def _event(self, run_id: str, seq: int, time_ms: int, entry: Mapping[str, Any]) -> Event:
        if "blob" in entry:
            data = json.loads(await self._get_blob(run_id, seq, entry["blob"]))
        else:
            data = json.loads(entry["data"])
        return Event(
            entry["type"], entry["step_id"], entry["attempt"], entry["agent"], data, seq, time_ms
        )

    # ----------------------------------------------------------- history

    async def _claim(self, batch: dict[str, Any]) -> bool:
        """Insert a history batch; True when it is there now, False when its seq is taken.

        Safe to repeat: when the `_id` is already there, the batch is read back
        and its token says whether an earlier try of this same write landed.
        """
        try:
            await self._events.insert_one(batch)
        except DuplicateKeyError:
            found = await self._events_latest.find_one({"_id": batch["_id"]}, {"token": 1})
            return found is not None and found.get("token") == batch["token"]
        return True

    async def _last_seq(self, run_id: str) -> int:
        newest = await self._events_latest.find_one(
            {"run_id": run_id}, {"last": 1}, sort=[("last", -1)]
        )
        return int(newest["last"]) if newest else 0

    async def _write_batch(
        self, run_id: str, entries: list[dict[str, Any]], status: str, after: int, renumber: bool
    ) -> tuple[int, int]:
        """Store entries as the next batch of the run's history. Returns (first seq, time).

        When another writer took the seq after `after`, the batch is numbered after
        the newest one if `renumber`, else refused.
        """
        token = uuid.uuid4().hex
        first = after + 1
        for _ in range(1000):
            batch = {
                "_id": _batch_id(run_id, first),
                "run_id": run_id,
                "first": first,
                "last": first + len(entries) - 1,
                "status": status,
                "time_ms": now_ms(),
                "token": token,
                "events": entries,
            }
            if await self._retry("append", lambda batch=batch: self._claim(batch)):
                return first, batch["time_ms"]
            if not renumber:
                raise StoreError(f"run {run_id} already has a history batch at seq {first}")
            # another writer took this seq: number the batch after the newest one
            first = await self._retry("read_last_seq", lambda: self._last_seq(run_id)) + 1
            log.debug("append_renumbered", run_id=run_id, first=first)
        raise StoreError(f"could not append to run {run_id}: its history keeps moving")

    async def create_run(self, run: RunRecord, events: Sequence[Event]) -> tuple[RunRecord, bool]:
        key = run.idempotency_key
        if key:
            existing = await self._retry(
                "find_run", lambda: self._runs.find_one({"idempotency_key": key})
            )
            if existing is not None:
                return _run(existing), False

        now = now_ms()
        if events:
            entries = await self._entries(run.run_id, events)
            _, now = await self._write_batch(run.run_id, entries, run.status, 0, renumber=False)
        doc: dict[str, Any] = {
            "_id": run.run_id,
            "run_id": run.run_id,
            "name": run.name,
            "status": run.status,
            "source": run.source,
            "filename": run.filename,
            "inputs_json": json.dumps(run.inputs),
            "config_json": json.dumps(run.config),
            "created_ms": now,
            "updated_ms": now,
            "last_seq": len(events),
            "token": uuid.uuid4().hex,
        }
        if key:
            doc["idempotency_key"] = key
        holder = await self._retry("create_run", lambda: self._claim_run(doc))
        if holder is not None:
            # a concurrent submit with the same key won: drop what this one wrote
            await self._remove_history([run.run_id])
            return _run(holder), False
        self._last_seqs[run.run_id] = len(events)
        return _run(doc), True

    async def _claim_run(self, doc: dict[str, Any]) -> dict[str, Any] | None:
        """Insert a run; None when it is there now, else the run that holds its key."""
        try:
            await self._runs.insert_one(doc)
        except DuplicateKeyError:
            found = await self._runs_latest.find_one({"_id": doc["_id"]}, {"token": 1})
            if found is not None and found.get("token") == doc["token"]:
                return None
            key = doc.get("idempotency_key")
            holder = await self._runs_latest.find_one({"idempotency_key": key}) if key else None
            if holder is None:
                raise StoreError(f"run id {doc['_id']} is already taken") from None
            return holder
        return None

    async def append(self, run_id: str, events: Sequence[Event], status: str) -> list[Event]:
        last = self._last_seqs.get(run_id)
        if last is None:
            run = await self._retry(
                "read_run", lambda: self._runs_latest.find_one({"_id": run_id}, {"last_seq": 1})
            )
            if run is None:
                raise StoreError(f"no run {run_id}")
            last = self._last_seqs.setdefault(run_id, run["last_seq"])
        if not events:
            await self._update_runs({run_id: (last, status, now_ms())})
            return []
        entries = await self._entries(run_id, events)
        write = _Append(run_id, entries, status, last, asyncio.get_running_loop().create_future())
        self._waiting.append(write)
        if self._group_writer is None:
            self._group_writer = asyncio.create_task(self._write_groups())
        first, now = await write.done
        return [
            Event(e.type, e.step_id, e.attempt, e.agent, e.data, seq, now)
            for seq, e in enumerate(events, start=first)
        ]

    async def _write_groups(self) -> None:
        """Write the waiting appends, a group at a time, until none wait."""
        try:
            while self._waiting:
                group: list[_Append] = []
                later: list[_Append] = []
                runs: set[str] = set()
                for write in self._waiting:
                    # one batch per run in a group: a second one is numbered after it
                    fits = write.run_id not in runs and len(group) < MAX_GROUP
                    (group if fits else later).append(write)
                    runs.add(write.run_id)
                self._waiting = later
                try:
                    outcomes = await self._write_group(group)
                except Exception as exc:  # noqa: BLE001 - handed to each write's caller
                    failed = exc if isinstance(exc, StoreError) else StoreError(str(exc))
                    outcomes = [failed] * len(group)
                for write, outcome in zip(group, outcomes, strict=True):
                    if write.done.done():
                        continue  # its caller stopped waiting; the write stands all the same
                    if isinstance(outcome, BaseException):
                        write.done.set_exception(outcome)
                    else:
                        write.done.set_result(outcome)
        finally:
            self._group_writer = None

    async def _write_group(self, group: list[_Append]) -> list[tuple[int, int] | BaseException]:
        """Insert the group's batches together, then update their runs together."""
        now = now_ms()
        batches = []
        for write in group:
            first = write.after + 1
            batches.append(
                {
                    "_id": _batch_id(write.run_id, first),
                    "run_id": write.run_id,
                    "first": first,
                    "last": first + len(write.entries) - 1,
                    "status": write.status,
                    "time_ms": now,
                    "token": uuid.uuid4().hex,
                    "events": write.entries,
                }
            )
        taken = await self._retry("append", lambda: self._claim_many(batches))
        outcomes: list[tuple[int, int] | BaseException] = []
        updates: dict[str, tuple[int, str, int]] = {}
        for index, (write, batch) in enumerate(zip(group, batches, strict=True)):
            first, time_ms = batch["first"], now
            if index in taken:
                # another writer took this seq: numbered after the newest batch instead
                last = await self._retry("read_last_seq", lambda w=write: self._last_seq(w.run_id))
                try:
                    first, time_ms = await self._write_batch(
                        write.run_id, write.entries, write.status, last, renumber=True
                    )
                except StoreError as exc:
                    outcomes.append(exc)
                    continue
            last = first + len(write.entries) - 1
            if write.status in RUN_FINISHED:
                self._last_seqs.pop(write.run_id, None)  # read again if it is resumed
            else:
                self._last_seqs[write.run_id] = last
            updates[write.run_id] = (last, write.status, time_ms)
            outcomes.append((first, time_ms))
        await self._update_runs(updates)
        return outcomes

    async def _claim_many(self, batches: list[dict[str, Any]]) -> set[int]:
        """Insert history batches; the indexes of those whose seq another writer took.

        Safe to repeat, as `_claim` is: a batch found under its `_id` with its own
        token is one an earlier try inserted.
        """
        try:
            await self._events.insert_many(batches, ordered=False)
        except BulkWriteError as exc:
            errors = exc.details.get("writeErrors", [])
            if any(error.get("code") != DUPLICATE_KEY for error in errors):
                raise
            clashes = {int(error["index"]) for error in errors}
            ids = [batches[index]["_id"] for index in clashes]
            found = await self._events_latest.find({"_id": {"$in": ids}}, {"token": 1}).to_list(
                None
            )
            tokens = {doc["_id"]: doc.get("token") for doc in found}
            return {i for i in clashes if tokens.get(batches[i]["_id"]) != batches[i]["token"]}
        return set()

    async def _update_runs(self, updates: Mapping[str, tuple[int, str, int]]) -> None:
        """Set each run's last seq, status and time; the newest batch decides, an
        older writer changes nothing."""
        if not updates:
            return
        requests = [
            UpdateOne(
                {"_id": run_id, "last_seq": {"$lte": last}},
                {"$set": {"last_seq": last, "status": status, "updated_ms": time_ms}},
            )
            for run_id, (last, status, time_ms) in updates.items()
        ]
        await self._retry("update_run", lambda: self._runs.bulk_write(requests, ordered=False))

    async def events(self, run_id: str, after_seq: int = 0, limit: int = 1000) -> list[Event]:
        found: list[Event] = []
        after = after_seq
        while len(found) < limit:
            # a batch holds one event or more: this many batches are enough,
            # and each call reads a bounded amount under its timeout
            want = min(limit - len(found), READ_BATCHES)
            batches = await self._retry(
                "read_events",
                lambda after=after, want=want: (
                    self._events.find({"run_id": run_id, "last": {"$gt": after}})
                    .sort("last", 1)
                    .limit(want)
                    .to_list(None)
                ),
            )
            for batch in batches:
                for seq, entry in enumerate(batch["events"], start=batch["first"]):
                    if seq > after and len(found) < limit:
                        found.append(await self._event(run_id, seq, batch["time_ms"], entry))
            if len(batches) < want:
                break
            after = found[-1].seq
        return found

    # -------------------------------------------------------------- runs

    async def get_run(self, run_id: str) -> RunRecord | None:
        doc = await self._retry("get_run", lambda: self._runs.find_one({"_id": run_id}))
        return None if doc is None else _run(doc)

    async def list_runs(self, limit: int = 50, before_run_id: str = "") -> list[RunRecord]:
        query = list_query(before_run_id)
        docs = await self._retry(
            "list_runs",
            lambda: self._runs.find(query).sort("run_id", -1).limit(limit).to_list(None),
        )
        return [_run(doc) for doc in docs]

    async def runs_with_status(self, statuses: Iterable[str]) -> list[RunRecord]:
        wanted = set(statuses)
        found: list[RunRecord] = []
        # one equality query per status: each one walks the by_status index
        for status in sorted(wanted):
            docs = await self._retry(
                "runs_with_status",
                lambda status=status: self._runs.find({"status": status}).to_list(None),
            )
            for doc in docs:
                record = await self._repaired(doc)
                if record.status in wanted:
                    found.append(record)
        return sorted(found, key=lambda record: record.run_id)

    async def _repaired(self, doc: dict[str, Any]) -> RunRecord:
        """The run as its newest history batch has it.

        `append` writes the batch, then the run: a crash between the two leaves
        the run behind its history, and this brings it level.
        """
        run_id = doc["_id"]
        newest = await self._retry(
            "read_last_seq",
            lambda: self._events.find_one(
                {"run_id": run_id}, {"last": 1, "status": 1, "time_ms": 1}, sort=[("last", -1)]
            ),
        )
        if newest is None or newest["last"] <= doc["last_seq"]:
            return _run(doc)
        fix = {
            "last_seq": newest["last"],
            "status": newest["status"],
            "updated_ms": newest["time_ms"],
        }
        await self._retry(
            "repair_run",
            lambda: self._runs.update_one(
                {"_id": run_id, "last_seq": {"$lt": newest["last"]}}, {"$set": fix}
            ),
        )
        log.info(
            "run_record_repaired", run_id=run_id, last_seq=newest["last"], status=fix["status"]
        )
        return _run({**doc, **fix})

    async def prune(self, finished_before_ms: int) -> int:
        # mark first, then remove: a prune cut short is finished by the next one
        marked = 0
        for status in sorted(RUN_FINISHED):
            result = await self._retry(
                "prune_mark",
                lambda status=status: self._runs.update_many(
                    {"status": status, "updated_ms": {"$lt": finished_before_ms}},
                    {"$set": {"status": PRUNING}},
                ),
            )
            marked += result.modified_count
        removed = 0
        while True:
            docs = await self._retry(
                "prune_find",
                lambda: self._runs.find({"status": PRUNING}, {"_id": 1}).limit(500).to_list(None),
            )
            if not docs:
                break
            ids = [doc["_id"] for doc in docs]
            for run_id in ids:
                self._last_seqs.pop(run_id, None)
            await self._remove_history(ids)
            result = await self._retry(
                "prune_runs",
                lambda ids=ids: self._runs.delete_many({"_id": {"$in": ids}, "status": PRUNING}),
            )
            removed += result.deleted_count
        if removed != marked:
            log.info("prune_finished_earlier_prune", marked=marked, removed=removed)
        return removed

    async def _remove_history(self, run_ids: list[str]) -> None:
        query = {"run_id": {"$in": run_ids}}
        for collection in (self._blobs, self._messages, self._events):
            await self._retry(
                "remove_history", lambda collection=collection: collection.delete_many(query)
            )

    # ------------------------------------------------------------ agents

    async def save_agent(self, agent: AgentRecord) -> None:
        doc = {
            "labels_json": json.dumps(dict(agent.labels)),
            "plugins_json": json.dumps({k: dict(v) for k, v in agent.plugins.items()}),
            "version": agent.version,
            "connected": agent.connected,
            "last_seen_ms": agent.last_seen_ms or now_ms(),
        }
        await self._retry(
            "save_agent",
            lambda: self._agents.replace_one({"_id": agent.name}, doc, upsert=True),
        )

    async def set_agent_connected(self, name: str, connected: bool) -> None:
        update = {"$set": {"connected": connected, "last_seen_ms": now_ms()}}
        await self._retry(
            "set_agent_connected", lambda: self._agents.update_one({"_id": name}, update)
        )

    async def agents(self) -> list[AgentRecord]:
        docs = await self._retry(
            "agents", lambda: self._agents.find().sort("_id", 1).to_list(None)
        )
        return [_agent(doc) for doc in docs]


def list_query(before_run_id: str) -> dict[str, Any]:
    """The filter of `list_runs`, sorted by run_id descending (the newest_first index)."""
    return {"run_id": {"$lt": before_run_id}} if before_run_id else {}


_MIGRATIONS: dict[int, Callable[[MongoStore], Awaitable[None]]] = {
    1: MongoStore._schema_v1,
}
