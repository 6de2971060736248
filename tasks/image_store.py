"""Where exported tarballs live, so that no build loses another's output.

Builds of one app run at the same time (a nightly, a push, a hand-started run)
and all ask for the same ``build/<app>.oci.tar``. Each export is therefore kept
under its own content hash in a store next to that path
(``build/.gobuild-images/<app>.oci-<sha256 prefix>.tar``): a stored file is never
rewritten with another image, so every report and event names a file that holds
the image it reports. The requested path is then pointed at the newest stored
image atomically (a hard link renamed over it, or a copy where links fail), so a
reader never sees half a tarball and always sees one whole image.

The store drops an image of a requested path once it is a week old
(``GOBUILD_IMAGE_STORE_DAYS``) and five newer ones exist, so reports of recent
builds keep naming files that exist. A cached build whose stored tarball was
pruned is rebuilt (``still_valid``).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
import time
from pathlib import Path

STORE_DIR = ".gobuild-images"
KEEP = 5
KEEP_DAYS = 7.0


def store_dir(output: Path) -> Path:
    return output.parent / STORE_DIR


def check_writable(output: Path) -> None:
    """Make the store beside ``output`` and write a file in it, so that a path this
    process cannot write (a read-only mount, another user's directory) is refused
    before the engine compiles anything, not when the export lands; raises
    ValueError with the reason. The store and the output's directory are where
    the export would put them, so creating them early leaves nothing stray."""
    try:
        new_partial(output).unlink()  # what the export does first
    except OSError as exc:
        raise ValueError(
            f"{str(output)!r} cannot be written: {exc.strerror or exc} "
            f"({exc.filename or store_dir(output)})"
        ) from None


def file_sha256(path: Path) -> str:
    with open(path, "rb") as fh:
        return "sha256:" + hashlib.file_digest(fh, "sha256").hexdigest()


def new_partial(output: Path) -> Path:
    """A fresh, unique path in the store for an export in progress."""
    store = store_dir(output)
    store.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{output.name}.", suffix=".partial", dir=store)
    os.close(fd)
    return Path(name)


def keep(partial: Path, output: Path) -> tuple[Path, str]:
    """Move a finished export into the store under its content hash.

    -> (stored path, sha256 of the file). The same bytes exported twice end up in
    the same stored file; different bytes never share one.
    """
    sha = file_sha256(partial)
    stem = output.name.removesuffix(".tar")
    stored = store_dir(output) / f"{stem}-{sha.removeprefix('sha256:')[:16]}.tar"
    os.replace(partial, stored)
    os.utime(stored)  # newest first when pruning, also when the bytes were seen before
    return stored, sha


def point(output: Path, stored: Path) -> None:
    """Make ``output`` hold the image in ``stored``, replacing it in one rename."""
    output.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{output.name}.", suffix=".tmp", dir=output.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        tmp.unlink()
        try:
            os.link(stored, tmp)
        except OSError:  # no hard links here (another filesystem, some mounts)
            shutil.copyfile(stored, tmp)
        os.replace(tmp, output)
    finally:
        tmp.unlink(missing_ok=True)


def prune(
    output: Path, current: Path, keep_newest: int = KEEP, keep_days: float | None = None
) -> None:
    """Drop stored images of ``output`` older than ``keep_days`` beyond the newest
    ``keep_newest`` (never ``current``)."""
    if keep_days is None:
        keep_days = float(os.environ.get("GOBUILD_IMAGE_STORE_DAYS", KEEP_DAYS))
    cutoff = time.time() - keep_days * 86400
    stem = output.name.removesuffix(".tar")
    stored = sorted(
        store_dir(output).glob(f"{stem}-*.tar"),
        key=lambda p: p.stat().st_mtime,
        reverse=True,
    )
    for path in stored[keep_newest:]:
        with contextlib.suppress(OSError):
            if path != current and path.stat().st_mtime < cutoff:
                path.unlink()
