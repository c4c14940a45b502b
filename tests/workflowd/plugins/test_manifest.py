"""`files.manifest` and `manifest.compare`: hashing a tree and reporting how two trees differ."""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path
from typing import Any

import pytest

from workflowd.errors import TaskError
from workflowd.execution import Outcome, execute
from workflowd.plugins.manifest import FilesManifest, ManifestCompare, ManifestParams
from workflowd.tasks import Report, StepContext

BINARY = bytes(range(256)) * 3
HELLO = b"hello\n"


def make_ctx(scratch: Path, reports: list[Report] | None = None) -> StepContext:
    sink = reports if reports is not None else []
    return StepContext("run-1", "step-1", 1, "host-a", {}, scratch, report=sink.append)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A tree with nested dirs, an empty and a binary file, and links to a file and a dir."""
    root = tmp_path / "tree"
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / "cache").mkdir()
    (root / "a.txt").write_bytes(HELLO)
    (root / "empty").write_bytes(b"")
    (root / "bin.dat").write_bytes(BINARY)
    (root / "sub" / "deeper" / "c.txt").write_text("c")
    (root / "sub" / "skip.log").write_text("noise")
    (root / "cache" / "x").write_text("cached")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "not-listed.txt").write_text("outside the tree")
    os.symlink("a.txt", root / "link-file")
    os.symlink("sub", root / "link-dir")
    os.symlink(outside, root / "link-outside")
    return root


def manifest(root: Path, exclude: list[str] | None = None, reports: list | None = None):
    ctx = make_ctx(root.parent, reports)
    return FilesManifest().run(ctx, ManifestParams(path=str(root), exclude=exclude or []))


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_manifest_lists_files_and_links(tree):
    """Every file is listed by relative path, size and sha256; links by target, not followed."""
    result = manifest(tree, exclude=["*.log", "cache"])

    assert [entry.model_dump() for entry in result.manifest] == [
        {"path": "a.txt", "size": 6, "sha256": sha256(HELLO), "link": None},
        {"path": "bin.dat", "size": len(BINARY), "sha256": sha256(BINARY), "link": None},
        {"path": "empty", "size": 0, "sha256": sha256(b""), "link": None},
        {"path": "link-dir", "size": 0, "sha256": "", "link": "sub"},
        {"path": "link-file", "size": 0, "sha256": "", "link": "a.txt"},
        {"path": "link-outside", "size": 0, "sha256": "", "link": str(tree.parent / "outside")},
        {"path": "sub/deeper/c.txt", "size": 1, "sha256": sha256(b"c"), "link": None},
    ]
    assert result.root == str(tree)
    assert result.files == 7
    assert result.bytes == 6 + len(BINARY) + 0 + 1


def test_manifest_digest_is_the_hash_of_the_canonical_lines(tree):
    """The manifest digest is the sha256 of one canonical line per entry, in path order."""
    result = manifest(tree, exclude=["*.log", "cache"])
    lines = [
        f"{sha256(HELLO)}  6  a.txt\n",
        f"{sha256(BINARY)}  {len(BINARY)}  bin.dat\n",
        f"{sha256(b'')}  0  empty\n",
        "link sub  link-dir\n",
        "link a.txt  link-file\n",
        f"link {tree.parent / 'outside'}  link-outside\n",
        f"{sha256(b'c')}  1  sub/deeper/c.txt\n",
    ]

    assert result.digest == sha256("".join(lines).encode())


def test_manifest_without_exclusions_lists_everything(tree):
    """With no exclude, logs and the cache directory are listed too."""
    paths = [entry.path for entry in manifest(tree).manifest]

    assert "sub/skip.log" in paths
    assert "cache/x" in paths
    assert len(paths) == 9


def test_manifest_digest_changes_with_one_byte(tree):
    """Changing one byte of one file changes that entry and the tree digest."""
    before = manifest(tree)
    (tree / "sub" / "deeper" / "c.txt").write_text("d")
    after = manifest(tree)

    assert before.digest != after.digest
    changed = [
        (old.path, new.path)
        for old, new in zip(before.manifest, after.manifest, strict=True)
        if old != new
    ]
    assert changed == [("sub/deeper/c.txt", "sub/deeper/c.txt")]


def test_same_content_in_another_place_gives_the_same_digest(tree, tmp_path):
    """Two copies of a tree have the same digest wherever they sit."""
    copy = tmp_path / "copy"
    (copy / "sub" / "deeper").mkdir(parents=True)
    (copy / "a.txt").write_bytes(HELLO)
    (copy / "sub" / "deeper" / "c.txt").write_text("c")

    original = manifest(tree, exclude=["*.log", "cache", "bin.dat", "empty", "link-*"])

    assert manifest(copy).digest == original.digest
    assert original.files == 2


def test_manifest_reports_progress_up_to_one(tree):
    """Progress is reported between 0 and 1, never backwards, ending at 1.0 with the count."""
    reports: list[Report] = []

    manifest(tree, reports=reports)

    progress = [(fraction, message) for kind, fraction, message in reports if kind == "progress"]
    fractions = [fraction for fraction, _ in progress]
    assert progress[-1] == (1.0, "9 files")
    assert fractions == sorted(fractions)
    assert all(0.0 <= fraction <= 1.0 for fraction in fractions)


def test_manifest_logs_its_start(tree):
    """The step log says how many files and bytes it is about to hash."""
    reports: list[Report] = []

    manifest(tree, exclude=["*.log", "cache", "link-*"], reports=reports)

    logs = [(level, message) for kind, level, message in reports if kind == "log"]
    assert logs == [("info", f"manifest_started root={tree} files=4 bytes={6 + len(BINARY) + 1}")]


@pytest.mark.parametrize("name", ["missing", "a.txt"])
def test_manifest_of_a_path_that_is_not_a_directory(tree, name):
    """A path that is missing or not a directory fails naming the path and the host."""
    with pytest.raises(TaskError) as caught:
        manifest(tree / name)

    assert str(caught.value) == f"{tree / name} is not a directory on host-a"


def test_manifest_of_an_empty_directory(tmp_path):
    """An empty tree has no files and the digest of nothing."""
    (tmp_path / "empty").mkdir()

    result = manifest(tmp_path / "empty")

    assert (result.files, result.bytes, result.manifest) == (0, 0, [])
    assert result.digest == sha256(b"")


def test_manifest_stops_when_cancelled(tree):
    """A cancelled manifest stops with Cancelled instead of hashing the rest."""
    ctx = make_ctx(tree.parent)
    ctx.cancelled.set()

    outcome = asyncio.run(execute(FilesManifest(), ctx, {"path": str(tree)}))

    assert (outcome.error, outcome.message) == (
        "cancelled",
        "cancelled (by the plugin): step step-1 was cancelled",
    )


# ------------------------------------------------------------------ compare


def entry(path: str, content: str = "") -> dict[str, Any]:
    data = (content or path).encode()
    return {"path": path, "size": len(data), "sha256": sha256(data)}


def compare(left: list, right: list, tmp_path: Path) -> Outcome:
    params = {"left": left, "right": right, "left_name": "host-a", "right_name": "host-b"}
    return asyncio.run(execute(ManifestCompare(), make_ctx(tmp_path), params))


def test_compare_equal_manifests(tmp_path):
    """Equal manifests succeed with equal=true and the file count, whatever their order."""
    left = [entry("a"), entry("b"), {"path": "l", "link": "a"}]

    outcome = compare(left, list(reversed(left)), tmp_path)

    assert outcome == Outcome(True, {"equal": True, "files": 3})


def test_compare_lists_missing_extra_and_differing(tmp_path):
    """Different manifests fail naming each missing, extra and differing file with counts."""
    left = [entry("a"), entry("b"), entry("c"), {"path": "l", "link": "a"}]
    right = [entry("a"), entry("c", "changed"), entry("d"), {"path": "l", "link": "b"}]

    outcome = compare(left, right, tmp_path)

    assert (outcome.ok, outcome.error) == (False, "task_error")
    assert outcome.message.splitlines() == [
        "manifests differ: host-a has 4 files, host-b has 4",
        "missing from host-b (1):",
        "  b",
        "only in host-b (1):",
        "  d",
        "differing (2):",
        "  c",
        "  l",
    ]
    assert outcome.details == {"missing": ["b"], "extra": ["d"], "differing": ["c", "l"]}
    assert not outcome.retryable


def test_compare_names_the_sides_left_and_right_by_default(tmp_path):
    """Without names the report speaks of left and right."""
    params = {"left": [entry("a")], "right": []}

    outcome = asyncio.run(execute(ManifestCompare(), make_ctx(tmp_path), params))

    assert outcome.message.splitlines() == [
        "manifests differ: left has 1 files, right has 0",
        "missing from right (1):",
        "  a",
    ]


def test_compare_cuts_long_listings_after_twenty(tmp_path):
    """Beyond 20 names a listing ends with '... and N more'; details keep every name."""
    left = [entry(f"f{i:02}") for i in range(25)]

    outcome = compare(left, [], tmp_path)

    lines = outcome.message.splitlines()
    assert lines[1] == "missing from host-b (25):"
    assert lines[2:22] == [f"  f{i:02}" for i in range(20)]
    assert lines[22:] == ["  ... and 5 more"]
    assert len(outcome.details["missing"]) == 25


def test_compare_lists_exactly_twenty_without_cut_off(tmp_path):
    """Twenty names are all listed with no '... and N more' line."""
    right = [entry(f"f{i:02}") for i in range(20)]

    lines = compare([], right, tmp_path).message.splitlines()

    assert lines[1] == "only in host-b (20):"
    assert lines[2:] == [f"  f{i:02}" for i in range(20)]


def test_manifests_of_two_copies_compare_equal_and_a_change_is_named(tree, tmp_path):
    """A manifest compared with its own copy is equal; after one edit the file is named."""
    before = [e.model_dump() for e in manifest(tree).manifest]
    (tree / "bin.dat").write_bytes(b"altered")
    after = [e.model_dump() for e in manifest(tree).manifest]

    assert compare(before, before, tmp_path).ok
    outcome = compare(before, after, tmp_path)
    assert outcome.message.splitlines()[1:] == ["differing (1):", "  bin.dat"]
