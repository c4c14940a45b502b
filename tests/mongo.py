"""A MongoDB wire-protocol server for the tests: secantusdb's, started here.

The tests start `secantusd-py` themselves, on a free loopback port with a data
directory of their own, and stop it when they are done. When
WORKFLOW_TEST_MONGO_URI is set (a real mongod or replica set), the tests that
only need a database use that server instead; the tests that kill and restart
the database still start one of their own, since they must own its process.
Every test gets a database of its own, so tests cannot see each other's runs.
"""

from __future__ import annotations

import os
import signal
import subprocess
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pymongo
from pymongo.errors import PyMongoError

from tests.cluster import BIN, free_port, wait_for

EXTERNAL_URI_ENV = "WORKFLOW_TEST_MONGO_URI"


def unique_database() -> str:
    return f"wf_test_{uuid.uuid4().hex[:12]}"


def with_database(uri: str, database: str) -> str:
    """The URI naming `database`, its hosts and options kept."""
    head, sep, options = uri.partition("?")
    scheme, _, rest = head.partition("://")
    hosts = rest.split("/", 1)[0]
    return f"{scheme}://{hosts}/{database}{sep}{options}"


def answers(uri: str) -> bool:
    """Whether a MongoDB server at `uri` answers a ping now."""
    try:
        with pymongo.MongoClient(uri, serverSelectionTimeoutMS=500, connectTimeoutMS=500) as c:
            c.admin.command("ping")
    except PyMongoError:
        return False
    return True


def drop_database(uri: str) -> None:
    with pymongo.MongoClient(uri, serverSelectionTimeoutMS=5000) as client:
        client.drop_database(client.get_default_database().name)


@dataclass
class SecantusServer:
    """One `secantusd-py` process on a loopback port, with its data under `root`."""

    root: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def uri(self, database: str = "") -> str:
        return f"mongodb://{self.address}/{database or unique_database()}"

    def log(self) -> str:
        path = self.root / "secantusd.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def start(self, wait: bool = True) -> None:
        assert self.process is None or self.process.poll() is not None, "already running"
        self.root.mkdir(parents=True, exist_ok=True)
        log = (self.root / "secantusd.log").open("ab")
        self.process = subprocess.Popen(
            [
                str(BIN / "secantusd-py"),
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--storage-path",
                str(self.root / "data"),
                # fsync the journal on commit: j:true then means on disk, as on mongod
                "--sync-on-commit",
                "--log-level",
                "WARNING",
            ],
            stdout=log,
            stderr=log,
            cwd=self.root,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        if wait:
            self.wait_ready()

    def wait_ready(self, timeout_s: float = 60) -> None:
        def ready() -> bool:
            if self.process is not None and self.process.poll() is not None:
                raise AssertionError(
                    f"secantusd-py exited {self.process.returncode}:\n{self.log()}"
                )
            return answers(f"mongodb://{self.address}/?directConnection=true")

        wait_for(ready, timeout_s, f"secantusd-py on {self.address}")

    def kill(self) -> None:
        """Kill the server outright, as a crash would."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(30)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
