"""Compiled binaries, kept beside Prefect's results as files named by their content.

A compile result is a small record (platform, digest, size, Go version, where the
binary is); the binary itself is a file of its own in the same result storage,
under ``gobuild-binaries/<sha256>``. Why not inside the pickled result, as
before: persisting a 20 MB binary that way held about four copies of it in memory
(the bytes, the pickle, its base64 text, the JSON record) and reading it back as
many. Now a local result store (Prefect's default, or a ``LocalFileSystem`` block
on a shared folder) gets the file copied by the file system and hands the stored
file itself to the engine, so the build process never loads a binary whole; a
remote store (S3, GCS, ...) costs one copy on the way in and one on the way out.

Because the file lives where the results live, a cache shared between workers
shares the binaries too, and a build served from cache on another machine finds
them. Same content, same name: concurrent builds of one binary write it once
(an atomic rename), and a cached record whose file is gone is detected
(:func:`available`) and rebuilt rather than used.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

from prefect.filesystems import LocalFileSystem, WritableFileSystem

BLOB_DIR = "gobuild-binaries"
_CHUNK = 1 << 20
_BUILDINFO_MAGIC = b"\xff Go buildinf:"


def blob_key(sha256: str) -> str:
    """The storage key of a binary with this digest (``sha256:<hex>``)."""
    return f"{BLOB_DIR}/{sha256.removeprefix('sha256:')}"


def local_base(storage: WritableFileSystem) -> Path | None:
    """The directory a local result store writes to (resolved as Prefect's
    ``LocalFileSystem`` does), or None for a remote one."""
    if type(storage) is not LocalFileSystem:
        return None
    return Path(storage.basepath or ".").expanduser().resolve()


async def result_storage() -> WritableFileSystem:
    """The result storage of the running task or flow (the default one outside)."""
    from prefect.results import aget_default_result_storage, get_result_store

    with contextlib.suppress(Exception):
        storage = get_result_store().result_storage
        if isinstance(storage, WritableFileSystem):
            return storage
    return await aget_default_result_storage()


async def keep(path: Path, sha256: str, storage: WritableFileSystem) -> str:
    """Store the binary at ``path`` under its digest; -> its storage key."""
    key = blob_key(sha256)
    base = local_base(storage)
    if base is None:
        await storage.write_path(key, path.read_bytes())  # type: ignore[misc]
        return key
    dest = base / key
    if dest.is_file() and dest.stat().st_size == path.stat().st_size:
        return key  # the same content is there already
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(f".{dest.name}.{uuid.uuid4().hex}.partial")
    try:
        shutil.copyfile(path, partial)  # streamed by the kernel, never read whole here
        os.replace(partial, dest)
    finally:
        partial.unlink(missing_ok=True)
    return key


def available(key: str, size: int, storage: WritableFileSystem) -> bool:
    """Whether a cached compile result's binary can still be read: for a local
    store, the file is there with its size; a remote store is trusted."""
    base = local_base(storage)
    if base is None:
        return True
    path = base / key
    return path.is_file() and path.stat().st_size == size


@contextlib.asynccontextmanager
async def host_file(key: str, storage: WritableFileSystem) -> AsyncIterator[Path]:
    """The stored binary as a file on this host, for the engine to read: the
    stored file itself when the store is local, else a downloaded temporary copy."""
    base = local_base(storage)
    if base is not None:
        yield base / key
        return
    with tempfile.TemporaryDirectory(prefix="gobuild-bin-") as tmp:
        path = Path(tmp, key.rsplit("/", 1)[-1])
        path.write_bytes(await storage.read_path(key))  # type: ignore[misc]
        yield path


def go_build_version(path: Path) -> str:
    """The Go version that compiled a binary, read from its build info (what
    ``go version <binary>`` prints), chunk by chunk: the report names the real
    compiler without another engine round trip or loading the binary whole.
    Empty when the binary has none."""
    with open(path, "rb") as f:
        at = _find_buildinfo(f)
        if at < 0:
            return ""
        f.seek(at)
        header = f.read(32)
        if len(header) < 32 or not header[15] & 2:  # flag 2: inline strings (Go 1.18+)
            return ""
        length, shift = 0, 0
        while byte := f.read(1):
            length |= (byte[0] & 0x7F) << shift
            shift += 7
            if not byte[0] & 0x80:
                break
        return f.read(min(length, 256)).decode(errors="replace")


def _find_buildinfo(f: object) -> int:
    """Offset of the first 16-byte-aligned build-info header, or -1."""
    read = f.read  # type: ignore[attr-defined]
    offset, tail = 0, b""
    while chunk := read(_CHUNK):
        data = tail + chunk
        start = offset - len(tail)
        at = data.find(_BUILDINFO_MAGIC)
        while at != -1:
            if (start + at) % 16 == 0:
                return start + at
            at = data.find(_BUILDINFO_MAGIC, at + 1)
        tail = data[-(len(_BUILDINFO_MAGIC) - 1) :]
        offset += len(chunk)
    return -1
