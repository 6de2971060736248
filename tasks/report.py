"""Build reports: what a run did, as Prefect artifacts and events.

One markdown artifact per run under a stable key per app (``build-<app>``), so
the Prefect UI shows the build history of each service; a table with a row per
platform; a link per published reference; on failure, the failing command and
the tails of its stdout and stderr (``go test`` reports failures on stdout,
``go build`` on stderr). Events let automations chain a deploy on
``gobuild.image.published`` or page someone on ``gobuild.build.failed``.

Event payloads (the contract automations rely on):

- ``gobuild.image.published`` (at least one reference pushed) and
  ``gobuild.image.exported`` (tarball only): ``app``, ``version``, ``tarball``,
  ``digest`` (the exported tarball's image digest), ``platforms`` (platform ->
  manifest digest in the tarball), ``source_digest``, ``commit``, and
  ``references``: one object per pushed reference, in the order requested::

      {"ref": "docker.io/team/app:1",     # the name the registry has (normalised)
       "requested": "team/app:1",         # as the build asked for it
       "digest": "sha256:…",              # what the registry received
       "link": "https://hub.docker.com/r/team/app/tags"}

  The registry's digest is the one to deploy (``ref@digest``); it need not equal
  the tarball's ``digest``, because the engine builds its own manifests to push.
  ``references`` is empty for ``gobuild.image.exported``.
- ``gobuild.build.failed``: ``app``, ``stage``, ``error`` (the first line of the
  error), ``hint`` (what to change: ``tasks/gohints.py`` for a go command, a
  symlink out of a local source that the failure names (:func:`link_hint`), and a
  base image a registry refused; '' where no fix is known); for a failed command
  also ``command``, ``exit_code``, ``stdout_tail`` and ``stderr_tail`` (its last
  lines, as text).

Command output is shown as the engine reported it: the engine scrubs secret
values from it, and nothing else (no parameters, no credentials) is added.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import re
import shlex
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from prefect.artifacts import (
    acreate_link_artifact,
    acreate_markdown_artifact,
    acreate_table_artifact,
)
from prefect.events import emit_event
from prefect.logging import get_run_logger
from pydantic import BaseModel, field_validator

from tasks import progress
from tasks.assemble import ImageArtifact
from tasks.compile import CompiledBinary
from tasks.context import build_context
from tasks.gohints import go_hint
from tasks.imageref import DOCKER_HUB, ImageRef, parse_image_ref
from tasks.params import BuildParams
from tasks.registry_auth import repository
from tasks.sdk import is_exec_error
from tasks.source import SourceInfo, outside_links_advice

OUTPUT_TAIL_LINES = 40  # per stream, in the failure artifact
EVENT_TAIL_LINES = 20  # per stream, in the failure event
OUTPUT_LINE_CHARS = 1000  # a minified JSON line must not swamp the report


class StageRecord(BaseModel):
    name: str
    seconds: float
    cached: bool


class PublishedImage(BaseModel):
    """One pushed reference, as reports and events show it (see the module docstring)."""

    ref: str
    requested: str
    digest: str
    link: str


class BuildResult(BaseModel):
    """What a run produced; the flow's return value and the CLI's output.

    ``references`` are the engine's answers to publish, ``name@digest`` with the
    name normalised (``docker.io/team/app:1@sha256:…``), in the order requested;
    ``requested_references`` are the same references as the build asked for them.
    """

    app: str
    version: str
    tarball: str  # the run's own tarball in the image store: it holds this image only
    output: str = ""  # the requested path, pointed at the newest build's tarball
    digest: str
    platforms: dict[str, str]
    binaries: dict[str, int]
    # extra_packages' programs: platform -> file name in /usr/local/bin -> size
    extra_binaries: dict[str, dict[str, int]] = {}
    references: list[str]
    requested_references: list[str] = []
    source_digest: str
    commit: str
    go_version: str
    stages: list[StageRecord]
    image_config: dict[str, Any] = {}  # how the container starts (ImageArtifact.config)

    @field_validator("platforms", "binaries")
    @classmethod
    def _platforms_named(cls, value: dict[str, Any]) -> dict[str, Any]:
        """A report row or event key without a platform names nothing; fail loudly
        here rather than publish a report nobody can read."""
        empty = [str(v) for k, v in value.items() if not k.strip()]
        if empty:
            raise ValueError(
                f"an empty platform name (for {', '.join(empty)}): every manifest of the "
                "image must record its platform"
            )
        return value

    @classmethod
    def collect(
        cls,
        params: BuildParams,
        version: str,
        source: SourceInfo,
        binaries: list[CompiledBinary],
        image: ImageArtifact,
        published: dict[str, str],
        stages: Stages,
    ) -> BuildResult:
        """``published`` maps each requested reference to publish's answer."""
        return cls(
            app=params.resolved_app_name(),
            version=version,
            tarball=image.path,
            output=str(params.resolved_output()),
            digest=image.digest,
            platforms=image.platforms,
            binaries={b.platform: b.size for b in binaries},
            extra_binaries={
                b.platform: {e.name: e.size for e in b.extras} for b in binaries if b.extras
            },
            references=list(published.values()),
            requested_references=list(published),
            source_digest=source.digest,
            commit=source.commit,
            go_version=binaries[0].go_version,
            stages=stages.records,
            image_config=image.config,
        )

    def published(self) -> list[PublishedImage]:
        """Each pushed reference with the registry's digest and a link to it."""
        requested = self.requested_references
        if len(requested) != len(self.references):
            requested = [r.partition("@")[0] for r in self.references]
        single_manifest = len(self.platforms) == 1
        images = []
        for answer, asked in zip(self.references, requested, strict=True):
            name, _, digest = answer.partition("@")
            try:
                link = registry_link(answer, single_manifest=single_manifest)
            except ValueError:  # an answer we cannot parse: report it, unlinked
                link = ""
            images.append(PublishedImage(ref=name, requested=asked, digest=digest, link=link))
        return images


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

    async def connect(self, engine: Any) -> None:
        """Open the engine session, so a failure there is reported as the
        connection's, not as the stage that ran before it."""
        if engine.is_open:
            return
        self.current = "engine connection"
        async with progress.step("engine", "open a Dagger session"):  # may start an engine
            await engine.open()

    async def run(
        self,
        name: str,
        task: Any,
        *args: Any,
        valid: Callable[[Any], bool] | None = None,
        connecting: Any = None,
    ) -> Any:
        """Run a stage; with ``connecting`` (the run's engine scope), open its
        session meanwhile, for a build that needs the engine whatever the stage
        finds: the two waits overlap instead of adding up."""
        if connecting is not None:
            return await self._beside_connect(connecting, name, task, args, valid)
        result, cached = await self._once(name, task, args, self.refresh)
        if cached and valid is not None and not valid(result):
            progress.cache_decision(f"{name}: the cached result's file is gone, so it runs again")
            result, _ = await self._once(name, task, args, True)
        return result

    async def _beside_connect(
        self, engine: Any, name: str, task: Any, args: tuple, valid: Any
    ) -> Any:
        """The session opens in this task, where it will close (its context cannot
        leave the task that entered it); the stage runs beside it. A failure is
        reported as the step that failed, the connection's first. The stage is
        let finish rather than cancelled, so that its task run ends in a state
        of its own instead of Crashed."""
        stage = asyncio.ensure_future(self.run(name, task, *args, valid=valid))
        try:
            await self.connect(engine)
        except BaseException as exc:
            if isinstance(exc, asyncio.CancelledError):
                stage.cancel()  # the run is being stopped (timeout_minutes): the stage too
            with contextlib.suppress(BaseException):
                await stage
            self.current = "engine connection"
            raise
        try:
            return await stage
        finally:
            self.current = name

    async def _once(self, name: str, task: Any, args: tuple, refresh: bool) -> tuple[Any, bool]:
        self.current = name
        started = time.monotonic()
        progress.stage_started(name)
        runner = _refreshing(task) if refresh else task
        state = await runner(*args, return_state=True)
        cached = state.name == "Cached"
        seconds = time.monotonic() - started
        self.records.append(StageRecord(name=name, seconds=seconds, cached=cached))
        if not state.is_completed():
            progress.stage_failed(name, seconds)
            return await state.aresult(), cached  # raises the stage's error
        result = await state.aresult()
        key = progress.cache_key(task, args) if cached else ""
        progress.stage_finished(name, seconds, cached=cached, key=key, result=result)
        return result, cached


_REFRESHING: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()


def _refreshing(task: Any) -> Any:
    """``task`` with ``refresh_cache`` on, made once per task: ``with_options``
    builds a whole new Task (~3 ms of CPU), which a forced build would otherwise
    pay for every stage of every run, between the stages."""
    if task not in _REFRESHING:
        _REFRESHING[task] = task.with_options(refresh_cache=True)
    return _REFRESHING[task]


def _normalised(ref: ImageRef) -> tuple[str, str, str]:
    """(registry, path, tag) as the engine names a pushed image: Docker Hub's aliases
    and shorthand to ``docker.io``, its one-part names under ``library/``, and a
    missing tag to ``latest``."""
    return ref.registry, ref.registry_path, ref.tag or "latest"


def _loopback(domain: str) -> bool:
    host = domain.rsplit(":", 1)[0] if not domain.endswith("]") else domain
    host = host.strip("[]")
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def registry_link(published: str, *, single_manifest: bool = False) -> str:
    """A URL that shows a pushed image: the registry's web page where there is a
    well-known one, else the manifest through the registry API.

    - Docker Hub: the repository's tags page (``https://hub.docker.com/_/<name>``
      for official images); for a single-platform image, whose digest is its
      manifest's, the image's own page (``/layers/<ns>/<repo>/<tag>/images/sha256-…``).
      A multi-platform push answers with the index digest, which that page does
      not take, so those get the tags page.
    - ghcr.io: ``https://ghcr.io/<path>``, which GitHub redirects to the package.
    - quay.io: the repository's tags tab.
    - anything else (gcr.io, *-docker.pkg.dev, self-hosted): the registry API's
      manifest URL, over plain HTTP for loopback registries.
    """
    ref = parse_image_ref(published)
    domain, path, tag = _normalised(ref)
    if domain == DOCKER_HUB and path.count("/") == 1:
        namespace, repo = path.split("/")
        if single_manifest and ref.tag and ref.digest:
            hex_digest = ref.digest.replace(":", "-", 1)
            return f"https://hub.docker.com/layers/{namespace}/{repo}/{ref.tag}/images/{hex_digest}"
        if namespace == "library":
            return f"https://hub.docker.com/_/{repo}"
        return f"https://hub.docker.com/r/{namespace}/{repo}/tags"
    if domain == "ghcr.io":
        return f"https://ghcr.io/{path}"
    if domain == "quay.io":
        return f"https://quay.io/repository/{path}?tab=tags"
    host = "registry-1.docker.io" if domain == DOCKER_HUB else domain
    scheme = "http" if _loopback(host) else "https"
    return f"{scheme}://{host}/v2/{path}/manifests/{ref.digest or tag}"


def _link_label(link: str) -> str:
    if link.startswith("https://hub.docker.com/"):
        return "Docker Hub"
    if link.startswith("https://ghcr.io/"):
        return "GitHub Packages"
    if link.startswith("https://quay.io/"):
        return "Quay"
    return "manifest (registry API)"


def _programs(result: BuildResult, platform: str) -> str:
    """``extra_packages``' programs of one platform, as a table cell."""
    sizes = result.extra_binaries.get(platform, {})
    return ", ".join(f"`{name}` {size:,} bytes" for name, size in sizes.items())


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
    more = bool(result.extra_binaries)  # a column for extra_packages' programs
    lines += [
        "",
        "| platform | binary size |"
        + (" more programs |" if more else "")
        + " manifest (in the tarball) |",
        "|---|---|" + ("---|" if more else "") + "---|",
    ]
    lines += [
        f"| {p} | {result.binaries.get(p, 0):,} bytes |"
        + (f" {_programs(result, p)} |" if more else "")
        + f" `{d}` |"
        for p, d in result.platforms.items()
    ]
    lines += [
        "",
        f"- image digest (tarball): `{result.digest}`",
        f"- OCI tarball: `{result.tarball}`"
        + (f" (also at `{result.output}` until a newer build)" if result.output else ""),
        f"- source digest: `{result.source_digest}`",
        f"- commit: `{result.commit or 'n/a'}`",
        f"- Go version: {result.go_version}",
        "",
        *_config_section(result.image_config),
        "## References",
        "",
    ]
    images = result.published()
    if not images:
        return "\n".join([*lines, "- none (exported the OCI tarball only)"]) + "\n"
    lines += ["| requested | pushed as | registry digest | link |", "|---|---|---|---|"]
    lines += [
        f"| `{i.requested}` | `{i.ref}` | `{i.digest or 'n/a'}` "
        f"| {f'[{_link_label(i.link)}]({i.link})' if i.link else 'n/a'} |"
        for i in images
    ]
    if any(i.digest != result.digest for i in images):
        lines += [
            "",
            "The registry digest is the one to deploy: the engine builds its own manifests "
            "to push, so it need not equal the tarball's image digest.",
        ]
    return "\n".join(lines) + "\n"


_CONFIG_NAMES = {
    "Entrypoint": "entrypoint",
    "Cmd": "default arguments",
    "WorkingDir": "working directory",
    "User": "user",
    "ExposedPorts": "exposed ports",
    "Env": "environment (names)",
}


def _config_section(config: dict[str, Any]) -> list[str]:
    """How the container starts, as the exported image says."""
    if not config:
        return []
    lines = ["## Image config", ""]
    for key, name in _CONFIG_NAMES.items():
        value = config.get(key)
        if value:
            shown = " ".join(f"`{v}`" for v in value) if isinstance(value, list) else f"`{value}`"
            lines.append(f"- {name}: {shown}")
    return [*lines, ""]


async def report_success(result: BuildResult) -> None:
    progress.build_finished(result)
    images = result.published()
    # The artifacts are independent requests: sent at once, a build waits for one
    # round trip to the API instead of one per artifact.
    await asyncio.gather(
        acreate_markdown_artifact(
            key=artifact_key(result.app),
            markdown=success_markdown(result),
            description=f"{result.app} {result.version}: {result.digest}",
        ),
        acreate_table_artifact(
            key=artifact_key(result.app, "platforms"),
            table=[
                {
                    "platform": p,
                    "binary_size": result.binaries.get(p, 0),
                    "manifest_digest": d,
                    "image_digest": result.digest,
                }
                | ({"more_programs": _programs(result, p)} if result.extra_binaries else {})
                for p, d in result.platforms.items()
            ],
            description=f"{result.app} {result.version} per platform",
        ),
        *(
            acreate_link_artifact(
                key=artifact_key(result.app, "image"),
                link=image.link,
                link_text=f"{image.ref}@{image.digest}" if image.digest else image.ref,
                description=f"{result.app} {result.version} published as {image.requested}",
            )
            for image in images
            if image.link
        ),
    )
    resource = {
        "prefect.resource.id": f"gobuild.image.{result.app}",
        "prefect.resource.name": result.app,
    }
    payload = result.model_dump(
        include={"app", "version", "digest", "platforms", "tarball", "source_digest", "commit"}
    )
    payload["references"] = [image.model_dump() for image in images]
    event = "gobuild.image.published" if images else "gobuild.image.exported"
    emit_event(event, resource=resource, payload=payload)


def output_tail(text: str, lines: int) -> tuple[str, int]:
    """The last ``lines`` lines of a command's output (each cut to a readable width)
    and how many lines there were in all."""
    all_lines = text.rstrip("\n").splitlines()
    tail = [
        line if len(line) <= OUTPUT_LINE_CHARS else line[:OUTPUT_LINE_CHARS] + " …"
        for line in all_lines[-lines:]
    ]
    return "\n".join(tail), len(all_lines)


def _fenced(text: str) -> list[str]:
    """A code block that the text cannot close early, whatever backticks it holds."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return [fence, text, fence]


def _stream_section(name: str, text: str) -> list[str]:
    tail, total = output_tail(text, OUTPUT_TAIL_LINES)
    if not total:
        return [f"{name}: (empty)", ""]
    shown = f"last {OUTPUT_TAIL_LINES} of {total} lines" if total > OUTPUT_TAIL_LINES else "all"
    return [f"{name} ({shown}):", "", *_fenced(tail), ""]


_PULL_DENIED = re.compile(
    r'failed to resolve image "(?P<ref>[^"]+)".*?(?:401|403|[Uu]nauthorized|[Ff]orbidden|denied)'
)


def failure_hint(params: BuildParams, exc: BaseException) -> str:
    """What to change for a failed go command or a refused base-image pull whose
    fix is known, '' otherwise."""
    known = getattr(exc, "gobuild_hint", None)  # the summary, artifact and event share it
    if isinstance(known, str):
        return known
    if not is_exec_error(exc):
        hint = pull_hint(params, str(exc))
    else:
        hint = link_hint(params, f"{exc.stderr}\n{exc.stdout}") or go_hint(
            exc.stderr,
            builder_image=params.builder_image,
            go_auth_secret_block=params.go_auth_secret_block,
            module_dir=params.module_dir,
            command=exc.command,
            stdout=exc.stdout,
        )
    with contextlib.suppress(AttributeError):
        exc.gobuild_hint = hint  # type: ignore[attr-defined]
    return hint


def link_hint(params: BuildParams, text: str) -> str:
    """For a failure that names a symlink of a local source leading out of it
    (``BuildContext.outside_links``), by its path or as part of an import path:
    the fix (``tasks.source.outside_links_advice``). Go's own words for it say
    only that a package or file is missing. The source is walked again, once, on
    a failure only."""
    root = params.local_source()
    if root is None or not text:
        return ""
    try:
        context = build_context(root, use_gitignore=params.use_gitignore)
    except Exception:  # the hint is a courtesy: the build's own error stands
        return ""
    prefix = "" if params.module_dir in ("", ".") else params.module_dir.strip("/") + "/"
    named = [
        (rel, target)
        for rel, target in context.outside_links()
        if re.search(rf"(?<![\w.-]){re.escape(rel.removeprefix(prefix))}(?![\w.-])", text)
    ]
    return outside_links_advice(root, params.module_dir, named) if named else ""


def pull_hint(params: BuildParams, message: str) -> str:
    """The hint for a base image the registry would not serve: which parameter
    named it, and where its credentials go (``tasks/registry_auth.py``)."""
    match = _PULL_DENIED.search(message)
    if match is None:
        return ""
    wanted = repository(match["ref"])
    named = next(
        (f for f in ("builder_image", "runtime_image") if repository(getattr(params, f)) == wanted),
        "builder_image",
    )
    host = wanted.split("/", 1)[0]
    if params.registry_secret_block:
        return (
            f"{host} refused to serve {named} {getattr(params, named)!r} with the credentials "
            f"of registry_secret_block {params.registry_secret_block!r}: give that block "
            f'credentials for {host} ({{"{host}": {{"username": ..., "password": ...}}}})'
        )
    return (
        f"{host} refused to serve {named} {getattr(params, named)!r} without credentials: set "
        f"registry_secret_block to a Secret block holding credentials for {host} "
        f'({{"{host}": {{"username": ..., "password": ...}}}}, or a Docker config.json)'
    )


def failure_markdown(params: BuildParams, stage: str, exc: BaseException) -> str:
    lines = [f"# Build of `{params.resolved_app_name()}`: failed in {stage}", ""]
    if is_exec_error(exc):
        lines += [f"Command (exit code {exc.exit_code}):", "", *_fenced(shlex.join(exc.command))]
        lines += [
            "",
            *_stream_section("stdout", exc.stdout),
            *_stream_section("stderr", exc.stderr),
        ]
    else:
        lines += [*_fenced(f"{type(exc).__name__}: {exc}"), ""]
    hint = failure_hint(params, exc)
    if hint:
        lines += [f"Hint: {hint}.", ""]
    return "\n".join(lines).rstrip("\n") + "\n"


async def report_failure(params: BuildParams, stage: str, exc: BaseException) -> None:
    """Best effort: a report that cannot be written must not hide the build's own error."""
    progress.build_failed(stage)
    try:
        await _report_failure(params, stage, exc)
    except Exception as report_exc:
        get_run_logger().warning("could not write the failure report: %s", report_exc)


def failure_payload(params: BuildParams, stage: str, exc: BaseException) -> dict[str, Any]:
    """The ``gobuild.build.failed`` payload (see the module docstring)."""
    app = params.resolved_app_name()
    first_line = (str(exc).splitlines() or [type(exc).__name__])[0]
    payload: dict[str, Any] = {"app": app, "stage": stage, "error": first_line}
    if is_exec_error(exc):
        payload.update(
            command=exc.command,
            exit_code=exc.exit_code,
            stdout_tail=output_tail(exc.stdout, EVENT_TAIL_LINES)[0],
            stderr_tail=output_tail(exc.stderr, EVENT_TAIL_LINES)[0],
        )
    payload["hint"] = failure_hint(params, exc)
    return payload


async def _report_failure(params: BuildParams, stage: str, exc: BaseException) -> None:
    app = params.resolved_app_name()
    await acreate_markdown_artifact(
        key=artifact_key(app, "failure"),
        markdown=failure_markdown(params, stage, exc),
        description=f"{app}: failed in {stage}",
    )
    emit_event(
        "gobuild.build.failed",
        resource={"prefect.resource.id": f"gobuild.image.{app}", "prefect.resource.name": app},
        payload=failure_payload(params, stage, exc),
    )
