"""Immutable filesystem snapshots for the Dagger test engine.

The real engine keeps filesystem state in BuildKit snapshots; this test double keeps
it as a mapping from relative POSIX path to an entry, with file contents in a
content-addressed blob store on disk. Snapshots are plain values, so every lazy
object (Container, Directory, File) can share them without copying bytes, and an
operation such as ``withFile`` is a dictionary update, not a file copy.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from types import MappingProxyType
from typing import Literal

EntryKind = Literal["file", "dir", "symlink"]


@dataclass(frozen=True, slots=True)
class Entry:
    """One path in a snapshot: a regular file (``blob`` is its sha256), a directory,
    or a symlink (``target``)."""

    kind: EntryKind
    mode: int = 0o644
    blob: str = ""
    size: int = 0
    target: str = ""


Tree = MappingProxyType  # read-only dict[str, Entry]; keys are relative, no leading "/"


def freeze(entries: dict[str, Entry]) -> Tree:
    """Snapshots are shared between lazy objects, so they must never be mutated."""
    return MappingProxyType(dict(entries))


EMPTY: Tree = freeze({})


def norm(path: str) -> str:
    """Turn an absolute or relative container path into a snapshot key.

    ``..`` cannot climb above the root, as inside a real container.
    """
    parts: list[str] = []
    for part in PurePosixPath("/" + path).parts[1:]:
        if part in ("", "."):
            continue
        if part == "..":
            if parts:
                parts.pop()
            continue
        parts.append(part)
    return "/".join(parts)


class BlobStore:
    """Content-addressed file contents, shared by all snapshots of one engine."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, digest: str) -> Path:
        return self.root / digest

    def put_bytes(self, data: bytes) -> tuple[str, int]:
        digest = hashlib.sha256(data).hexdigest()
        target = self.path(digest)
        if not target.exists():
            fd, tmp = tempfile.mkstemp(dir=self.root)
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.replace(tmp, target)
        return digest, len(data)

    def put_file(self, src: Path) -> tuple[str, int]:
        h = hashlib.sha256()
        fd, tmp = tempfile.mkstemp(dir=self.root)
        size = 0
        with open(src, "rb") as fin, os.fdopen(fd, "wb") as fout:
            while chunk := fin.read(1 << 20):
                h.update(chunk)
                fout.write(chunk)
                size += len(chunk)
        digest = h.hexdigest()
        if self.path(digest).exists():
            os.unlink(tmp)
        else:
            os.replace(tmp, self.path(digest))
        return digest, size

    def read(self, digest: str) -> bytes:
        return self.path(digest).read_bytes()


def file_entry(store: BlobStore, data: bytes, mode: int = 0o644) -> Entry:
    digest, size = store.put_bytes(data)
    return Entry("file", mode & 0o7777, digest, size)


def with_parents(entries: dict[str, Entry], key: str) -> None:
    """Real filesystems have every parent directory of a file; keep that invariant."""
    parent = PurePosixPath(key).parent
    while str(parent) not in (".", ""):
        entries.setdefault(str(parent), Entry("dir", 0o755))
        parent = parent.parent


def subtree(tree: Tree, path: str) -> Tree:
    """The snapshot below ``path``, re-rooted there."""
    key = norm(path)
    if not key:
        return tree
    prefix = key + "/"
    return freeze({k[len(prefix) :]: v for k, v in tree.items() if k.startswith(prefix)})


def graft(tree: Tree, path: str, other: Tree) -> Tree:
    """Copy ``other`` into ``tree`` at ``path`` (merging, ``other`` wins), like
    ``withDirectory``."""
    key = norm(path)
    entries = dict(tree)
    if key:
        entries[key] = Entry("dir", 0o755)
        with_parents(entries, key)
    for rel, entry in other.items():
        entries[f"{key}/{rel}" if key else rel] = entry
    return freeze(entries)


def put(tree: Tree, path: str, entry: Entry) -> Tree:
    key = norm(path)
    entries = dict(tree)
    prefix = key + "/"
    if entry.kind != "dir":
        for k in [k for k in entries if k.startswith(prefix)]:
            del entries[k]
    entries[key] = entry
    with_parents(entries, key)
    return freeze(entries)


def remove(tree: Tree, path: str) -> Tree:
    key = norm(path)
    prefix = key + "/"
    return freeze({k: v for k, v in tree.items() if k != key and not k.startswith(prefix)})


def tree_digest(tree: Tree) -> str:
    """A digest of names, modes and contents: equal trees give equal digests."""
    h = hashlib.sha256()
    for key in sorted(tree):
        e = tree[key]
        h.update(f"{key}\0{e.kind}\0{e.mode:o}\0{e.blob}\0{e.target}\n".encode())
    return "sha256:" + h.hexdigest()


def import_host_dir(store: BlobStore, root: Path, keep) -> Tree:
    """Read a host directory into a snapshot; ``keep(rel, is_dir)`` filters paths."""
    entries: dict[str, Entry] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        rel_dir = "" if rel_dir == "." else rel_dir.replace(os.sep, "/")
        kept_dirs = []
        for d in sorted(dirnames):
            rel = f"{rel_dir}/{d}" if rel_dir else d
            full = Path(dirpath, d)
            if full.is_symlink():
                if keep(rel, False):
                    entries[rel] = Entry("symlink", 0o777, target=os.readlink(full))
                continue
            if keep(rel, True):
                kept_dirs.append(d)
                entries[rel] = Entry("dir", stat.S_IMODE(full.stat().st_mode))
        dirnames[:] = kept_dirs
        for f in sorted(filenames):
            rel = f"{rel_dir}/{f}" if rel_dir else f
            if not keep(rel, False):
                continue
            full = Path(dirpath, f)
            if full.is_symlink():
                entries[rel] = Entry("symlink", 0o777, target=os.readlink(full))
                continue
            st = full.stat()
            digest, size = store.put_file(full)
            entries[rel] = Entry("file", stat.S_IMODE(st.st_mode), digest, size)
    # Directories that only matched because a file inside them matched.
    for key in list(entries):
        with_parents(entries, key)
    return freeze(entries)


def materialize(store: BlobStore, tree: Tree, dest: Path) -> None:
    """Write a snapshot out as real files (for exec and for export)."""
    dest.mkdir(parents=True, exist_ok=True)
    for key in sorted(tree):
        e = tree[key]
        target = dest / key
        if e.kind == "dir":
            target.mkdir(parents=True, exist_ok=True)
        elif e.kind == "symlink":
            target.parent.mkdir(parents=True, exist_ok=True)
            if target.is_symlink() or target.exists():
                target.unlink()
            os.symlink(e.target, target)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            if target.exists():
                target.unlink()
            shutil.copyfile(store.path(e.blob), target)
            os.chmod(target, e.mode)
    for key in sorted(tree, reverse=True):
        e = tree[key]
        if e.kind == "dir":
            os.chmod(dest / key, e.mode | 0o700)
