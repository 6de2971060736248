"""Build reports: what a run did, as Prefect artifacts and events.

One markdown artifact per run under a stable key per app (``build-<app>``), so
the Prefect UI shows the build history of each service; a table with a row per
platform; a link per published reference; on failure, the failing command and
the tail of its stderr. Events let automations chain a deploy on
``gobuild.image.published`` or page someone on ``gobuild.build.failed``.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import dagger
from prefect.artifacts import (
    acreate_link_artifact,
    acreate_markdown_artifact,
    acreate_table_artifact,
)
from prefect.events import emit_event
from prefect.logging import get_run_logger
from pydantic import BaseModel

from tasks.assemble import ImageArtifact
from tasks.compile import CompiledBinary
from tasks.params import BuildParams, parse_image_ref
from tasks.source import SourceInfo

STDERR_TAIL_LINES = 40


class StageRecord(BaseModel):
    name: str
    seconds: float
    cached: bool


class BuildResult(BaseModel):
    """What a run produced; the flow's return value and the CLI's output."""

    app: str
    version: str
    tarball: str
    digest: str
    platforms: dict[str, str]
    binaries: dict[str, int]
    references: list[str]
    source_digest: str
    commit: str
    go_version: str
    stages: list[StageRecord]

    @classmethod
    def collect(
        cls,
        params: BuildParams,
        version: str,
        source: SourceInfo,
        binaries: list[CompiledBinary],
        image: ImageArtifact,
        references: list[str],
        stages: Stages,
    ) -> BuildResult:
        return cls(
            app=params.resolved_app_name(),
            version=version,
            tarball=image.path,
            digest=image.digest,
            platforms=image.platforms,
            binaries={b.platform: b.size for b in binaries},
            references=references,
            source_digest=source.digest,
            commit=source.commit,
            go_version=binaries[0].go_version,
            stages=stages.records,
        )


def artifact_key(app: str, suffix: str = "") -> str:
    base = re.sub(r"[^a-z0-9-]+", "-", f"build-{app}".lower()).strip("-")
    return f"{base}-{suffix}" if suffix else base


@dataclass
class Stages:
    """Runs each stage task, timing it and noting whether Prefect served it from cache.

    ``refresh`` (the run's ``force_rebuild``) bypasses the cache. ``valid`` checks a
    cached result against the world: a cached tarball that was deleted since is
    rebuilt rather than reported.
    """

    refresh: bool = False
    records: list[StageRecord] = field(default_factory=list)
    current: str = "start"

    async def run(
        self, name: str, task: Any, *args: Any, valid: Callable[[Any], bool] | None = None
    ) -> Any:
        result, cached = await self._once(name, task, args, self.refresh)
        if cached and valid is not None and not valid(result):
            result, _ = await self._once(name, task, args, True)
        return result

    async def _once(self, name: str, task: Any, args: tuple, refresh: bool) -> tuple[Any, bool]:
        self.current = name
        started = time.monotonic()
        state = await task.with_options(refresh_cache=refresh or None)(*args, return_state=True)
        cached = state.name == "Cached"
        self.records.append(
            StageRecord(name=name, seconds=time.monotonic() - started, cached=cached)
        )
        return await state.aresult(), cached


def _registry_url(ref: str) -> str:
    parsed = parse_image_ref(ref.split("@")[0])
    domain = parsed.domain or "registry-1.docker.io"
    scheme = "http" if domain.split(":")[0] in ("127.0.0.1", "localhost") else "https"
    digest = ref.split("@", 1)[1] if "@" in ref else parsed.tag
    return f"{scheme}://{domain}/v2/{parsed.path}/manifests/{digest}"


def success_markdown(result: BuildResult) -> str:
    lines = [
        f"# Build of `{result.app}` {result.version}: succeeded",
        "",
        "| stage | duration | cache |",
        "|---|---|---|",
    ]
    lines += [
        f"| {s.name} | {s.seconds:.2f} s | {'hit' if s.cached else 'miss'} |" for s in result.stages
    ]
    lines += ["", "| platform | binary size | image manifest |", "|---|---|---|"]
    lines += [
        f"| {p} | {result.binaries.get(p, 0):,} bytes | `{d}` |"
        for p, d in result.platforms.items()
    ]
    lines += [
        "",
        f"- image digest: `{result.digest}`",
        f"- OCI tarball: `{result.tarball}`",
        f"- source digest: `{result.source_digest}`",
        f"- commit: `{result.commit or 'n/a'}`",
        f"- Go version: {result.go_version}",
        "",
        "## References",
        "",
    ]
    lines += [f"- `{r}`" for r in result.references] or ["- none (exported the OCI tarball only)"]
    return "\n".join(lines) + "\n"


async def report_success(result: BuildResult) -> None:
    await acreate_markdown_artifact(
        key=artifact_key(result.app),
        markdown=success_markdown(result),
        description=f"{result.app} {result.version}: {result.digest}",
    )
    await acreate_table_artifact(
        key=artifact_key(result.app, "platforms"),
        table=[
            {
                "platform": p,
                "binary_size": result.binaries.get(p, 0),
                "manifest_digest": d,
                "image_digest": result.digest,
            }
            for p, d in result.platforms.items()
        ],
        description=f"{result.app} {result.version} per platform",
    )
    for ref in result.references:
        await acreate_link_artifact(
            key=artifact_key(result.app, "image"),
            link=_registry_url(ref),
            link_text=ref,
            description=f"{result.app} {result.version} published",
        )
    resource = {
        "prefect.resource.id": f"gobuild.image.{result.app}",
        "prefect.resource.name": result.app,
    }
    payload = result.model_dump(
        include={
            "app",
            "version",
            "digest",
            "platforms",
            "references",
            "tarball",
            "source_digest",
            "commit",
        }
    )
    if result.references:
        emit_event("gobuild.image.published", resource=resource, payload=payload)
    else:
        emit_event("gobuild.image.exported", resource=resource, payload=payload)


def failure_markdown(params: BuildParams, stage: str, exc: BaseException) -> str:
    lines = [f"# Build of `{params.resolved_app_name()}`: failed in {stage}", ""]
    if isinstance(exc, dagger.ExecError):
        tail = "\n".join(exc.stderr.splitlines()[-STDERR_TAIL_LINES:])
        lines += [
            f"Command (exit code {exc.exit_code}):",
            "",
            "```",
            " ".join(exc.command),
            "```",
            "",
            f"Last {STDERR_TAIL_LINES} lines of stderr:",
            "",
            "```",
            tail,
            "```",
        ]
    else:
        lines += ["```", f"{type(exc).__name__}: {exc}", "```"]
    return "\n".join(lines) + "\n"


async def report_failure(params: BuildParams, stage: str, exc: BaseException) -> None:
    """Best effort: a report that cannot be written must not hide the build's own error."""
    try:
        await _report_failure(params, stage, exc)
    except Exception as report_exc:
        get_run_logger().warning("could not write the failure report: %s", report_exc)


async def _report_failure(params: BuildParams, stage: str, exc: BaseException) -> None:
    app = params.resolved_app_name()
    await acreate_markdown_artifact(
        key=artifact_key(app, "failure"),
        markdown=failure_markdown(params, stage, exc),
        description=f"{app}: failed in {stage}",
    )
    first_line = (str(exc).splitlines() or [type(exc).__name__])[0]
    payload: dict[str, Any] = {"app": app, "stage": stage, "error": first_line}
    if isinstance(exc, dagger.ExecError):
        payload.update(command=exc.command, exit_code=exc.exit_code)
    emit_event(
        "gobuild.build.failed",
        resource={"prefect.resource.id": f"gobuild.image.{app}", "prefect.resource.name": app},
        payload=payload,
    )
