"""Dagger's multi-stage build guide, as written, for the benchmark's whole-process
comparisons.

    python -m bench.guide SRC OUTPUT.tar

This is the script a team starts from before adopting a tool: the cookbook's
"Perform a multi-stage build" recipe (docs.dagger.io/cookbook/builds) as a plain
Python SDK program, with the one change that this machine has no registry to
publish to, so it exports an OCI tarball instead. Unlike ``bench/plain.py`` (the
same pipeline tuned like the flow: pinned images, Go cache volumes), it uses
``golang:latest`` and no cache volume, exactly as the guide does: every changed
source compiles with an empty Go build cache, and an unchanged one is answered
from the engine's own cache.
"""

from __future__ import annotations

import sys
from pathlib import Path

import anyio
import dagger
from dagger import dag


async def build(src: Path, output: Path) -> None:
    async with dagger.connection(dagger.Config(retry=None)):
        builder = (
            dag.container()
            .from_("golang:latest")
            .with_directory("/src", dag.host().directory(str(src)))
            .with_workdir("/src")
            .with_env_variable("CGO_ENABLED", "0")
            .with_exec(["go", "build", "-o", "myapp"])
        )
        prod = (
            dag.container()
            .from_("alpine")
            .with_file("/bin/myapp", builder.file("/src/myapp"))
            .with_entrypoint(["/bin/myapp"])
        )
        await prod.export(str(output))


def main() -> int:
    src, output = Path(sys.argv[1]).resolve(), Path(sys.argv[2]).resolve()
    anyio.run(build, src, output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
