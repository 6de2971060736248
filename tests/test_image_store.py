"""The image store: one file per image, the requested path pointed at the newest."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tasks import image_store


def export(output: Path, data: bytes) -> Path:
    partial = image_store.new_partial(output)
    partial.write_bytes(data)
    stored, sha = image_store.keep(partial, output)
    assert not partial.exists() and sha == image_store.file_sha256(stored)
    return stored


def test_same_bytes_share_a_file_and_different_bytes_never_do(tmp_path: Path) -> None:
    out = tmp_path / "build" / "app.oci.tar"
    a, again, b = export(out, b"image A"), export(out, b"image A"), export(out, b"image B")
    assert a == again and a != b
    assert a.read_bytes() == b"image A" and b.read_bytes() == b"image B"
    assert a.parent == out.parent / ".gobuild-images" and a.name.startswith("app.oci-")


def test_point_replaces_the_requested_path_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "app.oci.tar"
    a, b = export(out, b"image A"), export(out, b"image B")
    image_store.point(out, a)
    assert out.read_bytes() == b"image A"
    image_store.point(out, b)
    assert out.read_bytes() == b"image B" and a.read_bytes() == b"image A"

    def no_links(*_: object) -> None:
        raise OSError("hard links not supported here")

    monkeypatch.setattr(os, "link", no_links)  # another filesystem: copied instead
    image_store.point(out, a)
    assert out.read_bytes() == b"image A"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".gobuild-images", "app.oci.tar"]


def test_prune_drops_only_old_images_beyond_the_newest_and_never_the_current(
    tmp_path: Path,
) -> None:
    out = tmp_path / "app.oci.tar"
    stored = []
    for i in range(8):
        path = export(out, f"image {i}".encode())
        os.utime(path, (1000 + i, 1000 + i))  # long ago
        stored.append(path)
    recent = [export(out, f"recent {i}".encode()) for i in range(3)]  # just now
    other = export(tmp_path / "other.oci.tar", b"another app")
    image_store.prune(out, current=stored[0], keep_newest=5, keep_days=1)
    left = {p for p in (tmp_path / ".gobuild-images").iterdir()}
    # the 3 recent ones, the 2 newest old ones, the current one, the other app's
    assert left == {*recent, *stored[6:], stored[0], other}
    image_store.prune(out, current=recent[0], keep_newest=1, keep_days=1)
    assert set(recent) <= {p for p in (tmp_path / ".gobuild-images").iterdir()}


def test_check_writable_leaves_only_the_store_and_names_what_failed(tmp_path: Path) -> None:
    output = tmp_path / "out" / "app.oci.tar"
    image_store.check_writable(output)
    store = image_store.store_dir(output)
    assert store.is_dir() and list(store.iterdir()) == []  # the probe file is gone
    assert not output.exists()
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match=r"'.*/file/app\.oci\.tar' cannot be written: "):
        image_store.check_writable(tmp_path / "file" / "app.oci.tar")
    with pytest.raises(ValueError, match=r"cannot be written: Operation not permitted"):
        image_store.check_writable(Path("/sys/gobuild-test/app.tar"))
