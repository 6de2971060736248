"""Builds of one app at the same time never lose each other's output.

They all ask for the same ``--output``; each run keeps its tarball in the image
store under its content hash and reports that file, so every report names a file
holding the image it reports, and the requested path holds one whole image.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tasks.image_store import file_sha256
from tasks.oci_layout import image_digests
from tests.dagger_test_engine.server import TestEngine
from tests.oci_check import inspect_config
from tests.prefect_fixtures import PrefectAPI

ROOT = Path(__file__).resolve().parents[1]
VERSIONS = ["7.0.1", "7.0.2", "7.0.3"]


def test_simultaneous_cli_builds_of_one_app_keep_every_reported_tarball(
    prefect_api: PrefectAPI, dagger_cli_engine: TestEngine, hello_go: Path, tmp_path: Path
) -> None:
    out = tmp_path / "shared" / "hello.oci.tar"
    env = {**os.environ, **prefect_api.env}
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "flows.build", str(hello_go), "--version", version,
             "--output", str(out), "--no-checks"],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for version in VERSIONS
    ]  # fmt: skip
    reported: dict[str, tuple[Path, str]] = {}
    for version, proc in zip(VERSIONS, procs, strict=True):
        stdout, stderr = proc.communicate(timeout=900)
        assert proc.returncode == 0, stderr[-3000:]
        tarball, digest = stdout.split()[-2:]
        reported[version] = (Path(tarball), digest)

    assert len({t for t, _ in reported.values()}) == len(VERSIONS)  # one file per image
    for version, (tarball, digest) in reported.items():
        assert image_digests(tarball)[0] == digest  # the file holds the image reported
        labels = inspect_config(f"oci-archive:{tarball}")["config"]["Labels"]
        assert labels["org.opencontainers.image.version"] == version
    # The requested path is one whole image: one of theirs, byte for byte.
    assert file_sha256(out) in {file_sha256(t) for t, _ in reported.values()}
    leftovers = [p.name for p in out.parent.rglob("*") if p.name.endswith((".partial", ".tmp"))]
    assert leftovers == []
