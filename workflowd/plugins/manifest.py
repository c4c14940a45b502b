"""`files.manifest` and `manifest.compare`: data provenance across hosts.

A manifest lists every file of a tree by relative path with its size and
SHA-256 digest (symbolic links by their target, never followed), sorted by
path; its own digest is the SHA-256 of one canonical line per entry, so two
trees agree exactly when their digests do.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from workflowd.errors import TaskError
from workflowd.tasks import StepContext, Task

_CHUNK_BYTES = 1 << 20
_REPORT_LIMIT = 20


class Entry(BaseModel):
    path: str
    size: int = 0
    sha256: str = ""
    link: str | None = None

    def line(self) -> str:
        if self.link is not None:
            return f"link {self.link}  {self.path}\n"
        return f"{self.sha256}  {self.size}  {self.path}\n"


class ManifestParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: str = Field(
        min_length=1, description="Directory tree to hash, on the host that runs the step."
    )
    exclude: list[str] = Field(
        default_factory=list, description="Glob patterns of file or directory names to leave out."
    )


class ManifestOutputs(BaseModel):
    root: str
    files: int
    bytes: int
    digest: str
    manifest: list[Entry]


def _walk(root: Path, exclude: list[str]) -> list[tuple[str, Path]]:
    """Regular files and symlinks under root, as (relative posix path, path), sorted."""
    found = []

    def excluded(name: str) -> bool:
        return any(fnmatch.fnmatchcase(name, pattern) for pattern in exclude)

    def fail(error: OSError) -> None:
        raise TaskError(f"cannot read {error.filename}: {error.strerror}")

    for directory, dirnames, filenames in os.walk(root, onerror=fail):
        dirnames[:] = sorted(d for d in dirnames if not excluded(d))
        base = Path(directory)
        for name in filenames:
            if not excluded(name):
                path = base / name
                found.append((path.relative_to(root).as_posix(), path))
        # symlinked directories show up in dirnames but are not descended into
        for name in list(dirnames):
            if (base / name).is_symlink():
                found.append(((base / name).relative_to(root).as_posix(), base / name))
    return sorted(found)


def _hash(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


class FilesManifest(Task):
    name = "files.manifest"
    description = (
        "SHA-256 manifest of a directory tree: relative path, size and digest of every file."
    )
    Params = ManifestParams
    Outputs = ManifestOutputs

    def run(self, ctx: StepContext, params: ManifestParams) -> ManifestOutputs:
        root = Path(params.path)
        if not root.is_dir():
            raise TaskError(f"{params.path} is not a directory on {ctx.host}")

        files = _walk(root, params.exclude)
        sizes = {}
        for relative, path in files:
            if not path.is_symlink():
                sizes[relative] = path.stat().st_size
        total = sum(sizes.values())
        ctx.log.info("manifest_started", root=str(root), files=len(files), bytes=total)

        entries = []
        done = 0
        for index, (relative, path) in enumerate(files):
            ctx.raise_if_cancelled()
            if path.is_symlink():
                entries.append(Entry(path=relative, link=os.readlink(path)))
                continue
            try:
                entries.append(Entry(path=relative, size=sizes[relative], sha256=_hash(path)))
            except OSError as exc:
                raise TaskError(f"cannot read {path}: {exc.strerror}") from None
            done += sizes[relative]
            ctx.progress(done / total if total else (index + 1) / len(files), relative)

        digest = hashlib.sha256("".join(e.line() for e in entries).encode()).hexdigest()
        ctx.progress(1.0, f"{len(entries)} files")
        return ManifestOutputs(
            root=str(root), files=len(entries), bytes=total, digest=digest, manifest=entries
        )


class CompareParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    left: list[Entry] = Field(description="A manifest, e.g. ${{ steps.a.outputs.manifest }}.")
    right: list[Entry]
    left_name: str = "left"
    right_name: str = "right"


class CompareOutputs(BaseModel):
    equal: bool
    files: int


def _listing(title: str, paths: list[str]) -> list[str]:
    if not paths:
        return []
    lines = [f"{title} ({len(paths)}):"]
    lines += [f"  {path}" for path in paths[:_REPORT_LIMIT]]
    if len(paths) > _REPORT_LIMIT:
        lines.append(f"  ... and {len(paths) - _REPORT_LIMIT} more")
    return lines


class ManifestCompare(Task):
    name = "manifest.compare"
    description = "Compares two manifests; fails listing missing, extra and differing files."
    Params = CompareParams
    Outputs = CompareOutputs

    def run(self, ctx: StepContext, params: CompareParams) -> CompareOutputs:
        left = {entry.path: entry for entry in params.left}
        right = {entry.path: entry for entry in params.right}
        missing = sorted(left.keys() - right.keys())
        extra = sorted(right.keys() - left.keys())
        differing = sorted(p for p in left.keys() & right.keys() if left[p] != right[p])

        if missing or extra or differing:
            lines = [
                f"manifests differ: {params.left_name} has {len(left)} files, "
                f"{params.right_name} has {len(right)}"
            ]
            lines += _listing(f"missing from {params.right_name}", missing)
            lines += _listing(f"only in {params.right_name}", extra)
            lines += _listing("differing", differing)
            raise TaskError(
                "\n".join(lines),
                details={"missing": missing, "extra": extra, "differing": differing},
                retryable=False,
            )
        ctx.log.info("manifests_agree", files=len(left))
        return CompareOutputs(equal=True, files=len(left))
