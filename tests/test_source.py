"""The source digest: exactly the files that will be sent, and nothing else."""

from __future__ import annotations

import os
from pathlib import Path

from tasks.context import build_context, context_files
from tasks.source import digest_tree


def make_tree(root: Path) -> None:
    (root / "cmd").mkdir(parents=True)
    (root / "go.mod").write_text("module example.com/x\n")
    (root / "main.go").write_text("package main\n")
    (root / "cmd" / "tool.go").write_text("package cmd\n")
    big = root / "assets.bin"
    big.write_bytes(os.urandom(3 << 20))  # above the one-read threshold
    (root / ".git").mkdir()
    (root / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (root / "node_modules" / "x").mkdir(parents=True)
    (root / "node_modules" / "x" / "index.js").write_text("x\n")
    (root / ".dockerignore").write_text("# deps\nnode_modules/\n*.log\n")
    (root / "debug.log").write_text("noise\n")


def digest(root: Path, output: Path | None = None) -> tuple:
    return digest_tree(build_context(root, output))


def test_digest_covers_exactly_the_sent_files(tmp_path: Path) -> None:
    make_tree(tmp_path)
    d, files, kept, excluded, _ = digest(tmp_path)
    assert files == 5  # go.mod, main.go, cmd/tool.go, assets.bin, .dockerignore
    assert excluded > 0 and kept > 3 << 20

    # Excluded files do not change the digest; sent files do, and so does +x.
    (tmp_path / "debug.log").write_text("other noise\n")
    (tmp_path / "node_modules" / "x" / "index.js").write_text("y\n")
    (tmp_path / ".git" / "HEAD").write_text("ref: refs/heads/other\n")
    assert digest(tmp_path)[0] == d
    os.utime(tmp_path / "main.go", (1, 1))  # timestamps are not content
    assert digest(tmp_path)[0] == d
    (tmp_path / "main.go").chmod(0o755)
    assert digest(tmp_path)[0] != d
    (tmp_path / "main.go").chmod(0o644)
    assert digest(tmp_path)[0] == d
    big = tmp_path / "assets.bin"
    data = bytearray(big.read_bytes())
    data[-1] ^= 1
    big.write_bytes(bytes(data))
    assert digest(tmp_path)[0] != d


def test_output_inside_the_source_is_excluded(tmp_path: Path) -> None:
    make_tree(tmp_path)
    out = tmp_path / "build" / "app.oci.tar"
    before = digest(tmp_path, out)[0]
    out.parent.mkdir()
    out.write_bytes(b"tarball")
    stored = out.parent / ".gobuild-images" / "app.oci-0123456789abcdef.tar"
    stored.parent.mkdir()
    stored.write_bytes(b"stored tarball")  # the image store beside the output
    assert digest(tmp_path, out)[0] == before
    assert "build/.gobuild-images/app.oci-0123456789abcdef.tar" not in context_files(tmp_path, out)
    # Relative: the engine drops patterns that are not local paths, such as "/build/…".
    excludes = build_context(tmp_path, out).excludes
    assert "build/app.oci.tar" in excludes
    assert "build/.gobuild-images/**" in excludes
    assert not any(p.startswith("/") for p in excludes)


def test_symlinks_are_digested_by_target(tmp_path: Path) -> None:
    make_tree(tmp_path)
    (tmp_path / "link.go").symlink_to("main.go")
    d = digest(tmp_path)[0]
    (tmp_path / "link.go").unlink()
    (tmp_path / "link.go").symlink_to("cmd/tool.go")
    assert digest(tmp_path)[0] != d


def test_a_symlink_to_a_directory_is_a_symlink(tmp_path: Path) -> None:
    """The engine sends the link, not the directory behind it; so the digest
    covers the link's target and does not follow it."""
    make_tree(tmp_path)
    (tmp_path / "alias").symlink_to("cmd")
    d, files, *_ = digest(tmp_path)
    assert files == 6
    (tmp_path / "alias").unlink()
    (tmp_path / "alias").symlink_to("node_modules")
    assert digest(tmp_path)[0] != d


def test_patterns_are_anchored_at_the_root(tmp_path: Path) -> None:
    """``*.log`` in .dockerignore is ``./*.log`` (Docker, the engine): a log file
    deeper down is sent, and digested."""
    make_tree(tmp_path)
    d, files, *_ = digest(tmp_path)
    (tmp_path / "cmd" / "trace.log").write_text("sent\n")
    d2, files2, *_ = digest(tmp_path)
    assert (files2, d2 != d) == (files + 1, True)
