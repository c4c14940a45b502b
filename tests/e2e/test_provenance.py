"""The main job end to end: two real agents hash two real trees, the coordinator compares."""

from __future__ import annotations

import hashlib
import os
import sqlite3
from pathlib import Path

import pymongo
import pytest

from tests.cluster import Cluster

pytestmark = pytest.mark.e2e

PROVENANCE = Path(__file__).parents[2] / "examples" / "provenance.yaml"

on_each_store = pytest.mark.parametrize("cluster", ["sqlite", "mongodb"], indirect=True)


def make_tree(root: Path) -> Path:
    """A small real tree: nested directories, text and binary files, a symlink."""
    for index in range(40):
        path = root / f"dir{index % 4}" / f"sub{index % 3}" / f"file{index}.dat"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(index * 97) + f"file {index}\n".encode())
    (root / "README").write_text("top level\n")
    (root / "dir0" / "link").symlink_to("sub0")
    (root / "__pycache__").mkdir()
    (root / "__pycache__" / "skipped.pyc").write_bytes(b"\0")
    return root


def independent_digest(root: Path) -> tuple[int, str]:
    """The manifest digest computed here, without the product's code."""
    lines = []
    for directory, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d != "__pycache__"]
        for name in [*filenames, *(d for d in dirnames if (Path(directory) / d).is_symlink())]:
            path = Path(directory) / name
            relative = path.relative_to(root).as_posix()
            if path.is_symlink():
                lines.append((relative, f"link {os.readlink(path)}  {relative}\n"))
            else:
                data = path.read_bytes()
                lines.append(
                    (relative, f"{hashlib.sha256(data).hexdigest()}  {len(data)}  {relative}\n")
                )
    text = "".join(line for _, line in sorted(lines))
    return len(lines), hashlib.sha256(text.encode()).hexdigest()


@pytest.fixture
def two_hosts(cluster: Cluster, tmp_path: Path) -> tuple[Path, Path]:
    tree_a = make_tree(tmp_path / "host-a-data")
    tree_b = tmp_path / "host-b-data"
    os.system(f"cp -a {tree_a} {tree_b}")  # noqa: S605 - a fixed command on test paths
    cluster.start_agent("host-a")
    cluster.start_agent("host-b")
    return tree_a, tree_b


def submit_provenance(cluster: Cluster, a: Path, b: Path):
    return cluster.ctl(
        "submit", str(PROVENANCE), "--input", f"path_a={a}", "--input", f"path_b={b}", "--follow"
    )


@on_each_store
def test_equal_trees_succeed_with_matching_digests(cluster: Cluster, two_hosts) -> None:
    """Provenance of two identical trees succeeds and both digests are the true digest."""
    tree_a, tree_b = two_hosts
    result = submit_provenance(cluster, tree_a, tree_b)

    assert result.code == 0, result.stdout + result.stderr
    assert "run succeeded" in result.stdout
    run = cluster.run_status(result.stdout.split()[0])
    steps = {step["step_id"]: step for step in run["steps"]}
    files, digest = independent_digest(tree_a)
    assert steps["manifest-a"]["agent"] == "host-a"
    assert steps["manifest-b"]["agent"] == "host-b"
    assert steps["compare"]["agent"] == "coordinator"
    assert steps["manifest-a"]["outputs"]["digest"] == digest
    assert steps["manifest-b"]["outputs"]["digest"] == digest
    assert steps["compare"]["outputs"] == {"equal": True, "files": files}


@on_each_store
def test_different_trees_fail_with_a_readable_report(cluster: Cluster, two_hosts) -> None:
    """Altered, removed and added files on one host are each named in the failure."""
    tree_a, tree_b = two_hosts
    (tree_b / "dir1" / "sub1" / "file1.dat").write_bytes(b"tampered")
    (tree_b / "README").unlink()
    (tree_b / "dir2" / "new.txt").write_text("extra\n")

    result = submit_provenance(cluster, tree_a, tree_b)

    assert result.code == 1
    assert "run failed at step compare" in result.stdout
    report = result.stdout[result.stdout.index("manifests differ") :]
    assert "missing from host-b (1):\n      README" in report
    assert "only in host-b (1):\n      dir2/new.txt" in report
    assert "differing (1):\n      dir1/sub1/file1.dat" in report
    run = cluster.run_status(result.stdout.split()[0])
    assert run["status"] == "failed"
    assert "manifests differ" in run["error"]


def test_every_transition_is_in_the_sqlite_file(cluster: Cluster, two_hosts) -> None:
    """The run's history in the store is numbered 1..n without gaps, from submit to end."""
    result = submit_provenance(cluster, *two_hosts)
    run_id = result.stdout.split()[0]

    with sqlite3.connect(f"file:{cluster.store_path}?mode=ro", uri=True) as db:
        rows = db.execute(
            "SELECT seq, type, step_id, agent FROM events WHERE run_id=? ORDER BY seq", (run_id,)
        ).fetchall()
        status = db.execute("SELECT status FROM runs WHERE run_id=?", (run_id,)).fetchone()[0]

    assert [row[0] for row in rows] == list(range(1, len(rows) + 1))
    assert rows[0][1] == "run_submitted"
    assert rows[-1][1] == "run_succeeded"
    assert status == "succeeded"
    finished = {(step, agent) for _, kind, step, agent in rows if kind == "step_succeeded"}
    assert finished == {
        ("manifest-a", "host-a"),
        ("manifest-b", "host-b"),
        ("compare", "coordinator"),
    }


@pytest.mark.parametrize("cluster", ["mongodb"], indirect=True)
def test_every_transition_is_in_the_mongodb_store(cluster: Cluster, two_hosts) -> None:
    """On MongoDB too the run's history is numbered 1..n without gaps, from submit to end."""
    result = submit_provenance(cluster, *two_hosts)
    run_id = result.stdout.split()[0]

    with pymongo.MongoClient(cluster.store_uri) as client:
        db = client.get_default_database()
        batches = list(db.events.find({"run_id": run_id}).sort("first", 1))
        run = db.runs.find_one({"_id": run_id})
    rows = [
        (seq, entry["type"], entry["step_id"], entry["agent"])
        for batch in batches
        for seq, entry in enumerate(batch["events"], start=batch["first"])
    ]

    assert [row[0] for row in rows] == list(range(1, len(rows) + 1))
    assert rows[0][1] == "run_submitted"
    assert rows[-1][1] == "run_succeeded"
    assert (run["status"], run["last_seq"]) == ("succeeded", len(rows))
    finished = {(step, agent) for _, kind, step, agent in rows if kind == "step_succeeded"}
    assert finished == {
        ("manifest-a", "host-a"),
        ("manifest-b", "host-b"),
        ("compare", "coordinator"),
    }
