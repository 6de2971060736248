"""The baseline: a plain Dagger script doing the seed's pipeline, with no Prefect.

This is the script a user would write instead of adopting the flow (the same
chain as ``seed_build``/``seed_runtime`` in ``tests/test_engine_fidelity.py``):
golang build with the module and build caches as cache volumes, a static
cross-compile, an alpine runtime with the binary, entrypoint, user and labels,
exported as an OCI tarball. The overhead benchmark compares the flow against it,
so it must do the same engine work as the flow and nothing the flow does not.

``GOMODCACHE`` and ``GOCACHE`` are set to the cache-volume paths, as the flow's
builder does, so both sides name their caches the same way (on the golang image
those are the defaults anyway).
"""

from __future__ import annotations

from pathlib import Path

import dagger
from dagger import dag

from tasks.goenv import goenv
from tasks.params import DEFAULT_BUILDER_IMAGE, DEFAULT_RUNTIME_IMAGE

GOMODCACHE = "/go/pkg/mod"
GOCACHE = "/root/.cache/go-build"
BINARY = "/usr/local/bin/app"


def seed_build(src: Path, platform: str, version: str) -> dagger.Container:
    """golang stage: caches, static cross-compile, version stamped with -X."""
    ctr = (
        dag.container()
        .from_(DEFAULT_BUILDER_IMAGE)
        .with_mounted_cache(GOMODCACHE, dag.cache_volume("go-mod"))
        .with_mounted_cache(GOCACHE, dag.cache_volume("go-build"))
        .with_env_variable("GOMODCACHE", GOMODCACHE)
        .with_env_variable("GOCACHE", GOCACHE)
        .with_env_variable("CGO_ENABLED", "0")
    )
    for key, value in goenv(platform).items():
        ctr = ctr.with_env_variable(key, value)
    return (
        ctr.with_directory("/src", dag.host().directory(str(src), exclude=[".git"]))
        .with_workdir("/src")
        .with_exec(
            [
                "go",
                "build",
                "-trimpath",
                "-ldflags",
                f"-s -w -X main.version={version}",
                "-o",
                "/out/app",
                ".",
            ]
        )
    )


def seed_runtime(build: dagger.Container, platform: str, app: str) -> dagger.Container:
    """alpine stage: the binary, entrypoint, a numeric non-root user, a label."""
    return (
        dag.container(platform=dagger.Platform(platform))
        .from_(DEFAULT_RUNTIME_IMAGE)
        .with_file(BINARY, build.file("/out/app"))
        .with_entrypoint([BINARY])
        .with_user("65532")
        .with_label("org.opencontainers.image.title", app)
    )


async def plain_build(src: Path, version: str, output: Path, platforms: list[str]) -> str:
    """Build and export like the seed script: one connection, one export call."""
    async with dagger.connection(dagger.Config(retry=None)):
        variants = [seed_runtime(seed_build(src, p, version), p, src.name) for p in platforms]
        return await variants[0].export(str(output), platform_variants=variants[1:])
