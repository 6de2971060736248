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
import time
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath
from types import MappingProxyType
from typing import Literal

EntryKind = Literal["file", "dir", "symlink"]


@dataclass(frozen=True, slots=True)
class Entry:
    """One path in a snapshot: a regular file (``blob`` is its sha256), a directory,
    or a symlink (``target``).

    ``mtime`` is the modification time in whole Unix seconds (what a layer tar keeps:
    containerd truncates it, ``pkg/archive/tar.go``), or None where nothing set it;
    the real engine keeps host files' mtimes (``engine/client/filesync.go`` resets
    only uid/gid/xattrs) and files made in the engine get the time they were made.
    It is metadata: ``tree_digest`` ignores it, as exec cache keys must."""

    kind: EntryKind
    mode: int = 0o644
    blob: str = ""
    size: int = 0
    target: str = ""
    mtime: int | None = None


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


def file_entry(store: BlobStore, data: bytes, mode: int = 0o644, mtime: int | None = None) -> Entry:
    """A new file; made now unless ``mtime`` says otherwise (``withNewFile``)."""
    digest, size = store.put_bytes(data)
    return Entry("file", mode & 0o7777, digest, size, mtime=now() if mtime is None else mtime)


def now() -> int:
    return int(time.time())


def with_timestamps(tree: Tree, unix: int) -> Tree:
    """``Directory.withTimestamps``: every file and directory gets ``unix`` as its
    mtime (``core/directory.go`` ~2601-2645 walks the tree with ``os.Chtimes``,
    which follows symlinks, so a symlink's own time is left alone)."""
    return freeze(
        {k: e if e.kind == "symlink" else replace(e, mtime=int(unix)) for k, e in tree.items()}
    )


def lookup(tree: Tree, path: str, *, follow: bool = True) -> Entry | None:
    """The entry at ``path`` (None if there is none), resolving symlinks in its
    directories and, with ``follow``, in its last element, as a stat inside the
    snapshot does (a link's target is taken relative to its directory, an absolute
    one from the snapshot's root; 40 links at most, as Linux allows)."""
    key = resolve(tree, path, follow=follow)
    if key is None:
        return None
    return tree.get(key) if key else Entry("dir", 0o755)


def resolve(tree: Tree, path: str, *, follow: bool = True) -> str | None:
    """Where ``path`` leads in the snapshot, symlinks resolved as :func:`lookup`
    says ('' for the root); None if nothing is there."""
    parts = norm(path).split("/") if norm(path) else []
    done: list[str] = []
    hops = 0
    while parts:
        part = parts.pop(0)
        key = "/".join([*done, part])
        entry = tree.get(key)
        if entry is None:
            return None
        if entry.kind == "symlink" and (parts or follow):
            hops += 1
            if hops > 40:
                return None
            base = "" if entry.target.startswith("/") else "/".join(done)
            parts = [p for p in norm(f"{base}/{entry.target}").split("/") if p] + parts
            done = []
            continue
        done.append(part)
    return "/".join(done)


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
                    entries[rel] = _host_symlink(full)
                continue
            if keep(rel, True):
                kept_dirs.append(d)
                st = full.stat()
                entries[rel] = Entry("dir", stat.S_IMODE(st.st_mode), mtime=int(st.st_mtime))
        dirnames[:] = kept_dirs
        for f in sorted(filenames):
            rel = f"{rel_dir}/{f}" if rel_dir else f
            if not keep(rel, False):
                continue
            full = Path(dirpath, f)
            if full.is_symlink():
                entries[rel] = _host_symlink(full)
                continue
            entries[rel] = host_file_entry(store, full)
    # Directories that only matched because a file inside them matched.
    for key in list(entries):
        with_parents(entries, key)
    return freeze(entries)


def host_file_entry(store: BlobStore, path: Path) -> Entry:
    """A host file as the engine syncs it: content, permission bits and mtime."""
    st = path.stat()
    digest, size = store.put_file(path)
    return Entry("file", stat.S_IMODE(st.st_mode), digest, size, mtime=int(st.st_mtime))


def _host_symlink(path: Path) -> Entry:
    return Entry("symlink", 0o777, target=os.readlink(path), mtime=int(path.lstat().st_mtime))


def materialize(store: BlobStore, tree: Tree, dest: Path) -> None:
    """Write a snapshot out as real files (for exec and for export), with their
    mtimes where known, so files an exec does not touch keep theirs."""
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
            if e.mtime is not None:
                os.utime(target, (e.mtime, e.mtime))
    for key in sorted(tree, reverse=True):
        e = tree[key]
        if e.kind == "symlink" and e.mtime is not None:
            os.utime(dest / key, (e.mtime, e.mtime), follow_symlinks=False)
        if e.kind == "dir":
            os.chmod(dest / key, e.mode | 0o700)
            if e.mtime is not None:
                os.utime(dest / key, (e.mtime, e.mtime))
