"""The stages' Dagger chains as plain functions, without Prefect, on the test engine."""

from __future__ import annotations

import subprocess
from pathlib import Path

import anyio
import dagger
from dagger import dag

from tasks.compile import binary, builder
from tasks.params import parse_params
from tests.dagger_test_engine.server import TestEngine


def test_compile_chain_passes_build_tags_to_the_gate_and_the_build(
    dagger_engine: TestEngine, hello_go: Path, tmp_path: Path
) -> None:
    params = parse_params({"source": str(hello_go), "build_tags": ["netgo"], "version": "7.7.7"})
    out = tmp_path / "app"
    command: list[list[str]] = []

    async def main() -> None:
        async with dagger.connection(dagger.Config(retry=None)):
            src = dag.host().directory(str(hello_go))
            build = binary(builder(src, params), params, "linux/amd64", {"VERSION": "7.7.7"})
            command.append(build.args)
            assert dagger_engine.log.snapshot()["execs"] == []  # built, not evaluated
            await build.output.export(str(out))

    anyio.run(main)
    execs = dagger_engine.log.snapshot()["execs"]
    assert ["go", "vet", "-tags", "netgo", "./..."] in execs
    assert ["go", "test", "-tags", "netgo", "./..."] in execs
    go_build = next(e for e in execs if e[:2] == ["go", "build"])
    assert go_build == command[0]  # the command the run's log shows is the one run
    assert go_build[go_build.index("-tags") + 1] == "netgo"
    # The gate runs before the build (go mod download may be an engine cache hit here).
    assert execs.index(["go", "test", "-tags", "netgo", "./..."]) < execs.index(go_build)
    version = subprocess.run([str(out), "--version"], capture_output=True, text=True, check=True)
    assert version.stdout.strip() == "hello-go 7.7.7"
