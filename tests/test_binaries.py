"""The binary store beside Prefect's results (``tasks/binaries.py``).

A local store (Prefect's default, or a ``LocalFileSystem`` block on a shared folder)
and a remote one (Prefect's ``RemoteFileSystem`` on fsspec's in-memory file system,
standing for S3 or GCS) are both exercised through Prefect's own block classes.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import anyio
import pytest
from prefect.filesystems import LocalFileSystem, RemoteFileSystem

from tasks import binaries
from tasks.image_store import file_sha256
from tests.dagger_test_engine.server import TestEngine
from tests.flowruns import build
from tests.oci_check import extract_file
from tests.prefect_fixtures import PrefectAPI

GO = Path(__import__("go").__file__).parent / "bin" / "go"


def test_local_store_keeps_one_file_per_content_and_hands_out_the_stored_file(
    tmp_path: Path,
) -> None:
    storage = LocalFileSystem(basepath=str(tmp_path / "results"))
    built = tmp_path / "app"
    built.write_bytes(os.urandom(3 * 1024 * 1024 + 7))
    sha = file_sha256(built)

    async def go() -> Path:
        key = await binaries.keep(built, sha, storage)
        again = await binaries.keep(built, sha, storage)  # same content: nothing new
        assert key == again == f"gobuild-binaries/{sha.removeprefix('sha256:')}"
        async with binaries.host_file(key, storage) as path:
            return path

    stored = anyio.run(go)
    assert stored == tmp_path / "results" / "gobuild-binaries" / sha.removeprefix("sha256:")
    assert stored.read_bytes() == built.read_bytes()
    assert [p.name for p in stored.parent.iterdir()] == [stored.name]  # no partial files
    key = f"gobuild-binaries/{sha.removeprefix('sha256:')}"
    assert binaries.available(key, built.stat().st_size, storage)
    assert not binaries.available(key, built.stat().st_size + 1, storage)
    stored.unlink()
    assert not binaries.available(key, built.stat().st_size, storage)


def test_remote_store_round_trips_the_binary(tmp_path: Path) -> None:
    storage = RemoteFileSystem(basepath="memory://gobuild-binaries-test")
    built = tmp_path / "app"
    built.write_bytes(os.urandom(100_000))
    sha = file_sha256(built)

    async def go() -> bytes:
        key = await binaries.keep(built, sha, storage)
        async with binaries.host_file(key, storage) as path:
            assert path.parent != built.parent
            return path.read_bytes()

    assert anyio.run(go) == built.read_bytes()
    assert binaries.local_base(storage) is None


@pytest.fixture(scope="module")
def go_binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real Go binary, with 3 MB of data before its build info."""
    src = tmp_path_factory.mktemp("gosrc")
    (src / "go.mod").write_text("module example.com/x\n\ngo 1.22\n")
    (src / "blob.bin").write_bytes(os.urandom(3 * 1024 * 1024))
    (src / "main.go").write_text(
        'package main\n\nimport _ "embed"\n\n//go:embed blob.bin\nvar blob []byte\n\n'
        "func main() { println(len(blob)) }\n"
    )
    out = src / "x"
    env = {**os.environ, "CGO_ENABLED": "0", "GOFLAGS": "-mod=mod", "GOPROXY": "off"}
    env.setdefault("GOCACHE", str(tmp_path_factory.mktemp("gocache")))
    subprocess.run([str(GO), "build", "-o", str(out), "."], cwd=src, env=env, check=True)
    return out


def test_go_version_is_read_from_the_binary_as_go_version_prints_it(go_binary: Path) -> None:
    printed = subprocess.run(
        [str(GO), "version", str(go_binary)], capture_output=True, text=True, check=True
    ).stdout  # "<path>: go1.x.y"
    assert binaries.go_build_version(go_binary) == printed.rsplit(": ", 1)[1].strip()


def test_go_version_is_empty_for_a_file_without_build_info(tmp_path: Path) -> None:
    junk = tmp_path / "junk"
    # The magic at an unaligned offset is not a header.
    junk.write_bytes(b"x" * 3 + b"\xff Go buildinf:" + os.urandom(2_000_000))
    assert binaries.go_build_version(junk) == ""
    assert binaries.go_build_version(Path(sys.executable)) == ""  # not a Go binary


# --- in the flow: the binary beside the results, and in the engine within a run ---


def test_a_build_keeps_its_binary_beside_the_results_and_assembles_from_the_engine(
    prefect_api: PrefectAPI, dagger_engine: TestEngine, hello_go: Path, tmp_path: Path
) -> None:
    params = dict(
        source=str(hello_go), version="8.1.0", output=str(tmp_path / "b.tar"), run_checks=False
    )
    state = build(**params)
    assert state.is_completed(), state.message
    result = state.result()
    # The image's binary, by content: the file stored under its digest.
    layer_binary = tmp_path / "from-image"
    extract_file(f"oci-archive:{result.tarball}", "/usr/local/bin/hello-go", layer_binary)
    stored = prefect_api.results / "gobuild-binaries" / file_sha256(layer_binary)[7:]
    assert stored.read_bytes() == layer_binary.read_bytes()
    assert stored.stat().st_size == result.binaries["linux/amd64"]
    # The result records are small: the binary is not pickled into them.
    records = [p for p in prefect_api.results.iterdir() if p.is_file()]
    assert records and max(p.stat().st_size for p in records) < 64_000
    # Assembled from the binary the engine had just built: no upload from the host.
    assert dagger_engine.log.snapshot()["calls"].get("Host.file", 0) == 0

    # A new label: compile is served from Prefect's cache, assemble runs again and
    # uploads the stored binary; the image holds the same binary.
    dagger_engine.log.clear()
    relabelled = build(**params, labels={"org.example.team": "payments"})
    assert relabelled.is_completed(), relabelled.message
    log = dagger_engine.log.snapshot()
    assert not [e for e in log["execs"] if e[:2] == ["go", "build"]]
    assert log["calls"].get("Host.file", 0) >= 1
    assert relabelled.result().digest != result.digest


def test_a_cached_compile_whose_binary_is_gone_compiles_again(
    prefect_api: PrefectAPI, dagger_engine: TestEngine, hello_go: Path, tmp_path: Path
) -> None:
    params = dict(
        source=str(hello_go), version="8.2.0", output=str(tmp_path / "g.tar"), run_checks=False
    )
    first = build(**params)
    assert first.is_completed(), first.message
    store = prefect_api.results / "gobuild-binaries"
    mine = tmp_path / "mine"
    extract_file(f"oci-archive:{first.result().tarball}", "/usr/local/bin/hello-go", mine)
    stored = store / file_sha256(mine)[7:]
    stored.unlink()

    again = build(**params, runtime_image="alpine:3.22.1")  # assemble runs too
    assert again.is_completed(), again.message
    # The record was served, found wanting, and the stage ran (the engine may
    # answer its go build from its own cache).
    compiles = [s.cached for s in again.result().stages if s.name == "compile linux/amd64"]
    assert compiles == [True, False]
    assert stored.read_bytes() == mine.read_bytes()  # the same binary, stored again
