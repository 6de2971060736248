"""The ``multistage-build`` flow and its command line.

    python -m flows.build examples/hello-go --platform linux/amd64 --platform linux/arm64

The flow's parameters are the fields of ``BuildParams`` (so ``prefect deployment
run -p source=…`` and the UI form work field by field); they are validated before
any engine work. The four stages run over one Dagger session: compile once per
platform, concurrently; assemble and publish once for all platforms.
"""

from __future__ import annotations

import os
import sys

if __name__ == "__main__":  # before Prefect is imported: its settings read the environment
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

import argparse
import asyncio
import contextlib
import inspect
import logging
from collections.abc import Iterator
from typing import Any

from prefect import State, flow
from pydantic import Field
from pydantic.fields import FieldInfo

from flows import local_api, terminal
from flows.prefect_client import (
    PrefectAPIUnavailable,
    no_ca_bundle_for_plain_http,
    shared_prefect_client,
)
from tasks.assemble import (
    assemble_image,
    place_output,
    prepare_output,
    served_from_cache,
    still_valid,
)
from tasks.compile import binary_available, compile_binary
from tasks.deadline import deadline
from tasks.params import BuildParams, ParamsError, parse_params
from tasks.preflight import EngineUnavailable, preflight
from tasks.publish import publish_image
from tasks.report import (
    BuildResult,
    Stages,
    failure_hint,
    output_tail,
    report_failure,
    report_success,
)
from tasks.sdk import is_exec_error
from tasks.session import EngineScope, session_opened_early
from tasks.source import load_source


async def multistage_build(**parameters: Any) -> BuildResult:
    stages = Stages(current="parameters")
    params = None
    try:
        params = parse_params(_defaults_resolved(parameters))  # one line per bad field
        output = prepare_output(params)
        stages.refresh = params.force_rebuild
        stages.current = "engine slot"
        async with EngineScope() as engine, deadline(params.timeout_minutes):
            if params.is_git_source:
                await stages.connect(engine)  # the engine resolves the ref
            # A forced or publishing build needs the engine whatever the source
            # holds: its session opens while the source is read.
            surely = params.surely_needs_engine
            source = await stages.run(
                "load source", load_source, params, connecting=engine if surely else None
            )
            version = params.resolved_version()
            if not await served_from_cache(params, source, version):
                await stages.connect(engine)  # a no-op build never connects
            binaries = await asyncio.gather(
                *(
                    stages.run(
                        f"compile {p}",
                        compile_binary,
                        source,
                        params,
                        p,
                        version,
                        valid=binary_available,
                    )
                    for p in params.platforms
                )
            )
            image = await stages.run(
                "assemble runtime",
                assemble_image,
                source,
                params,
                binaries,
                version,
                valid=still_valid,
            )
            place_output(image, output)
            published = await stages.run("publish", publish_image, params, image, source)
    except BaseException as exc:
        with contextlib.suppress(AttributeError):  # for the CLI's summary
            exc.gobuild_stage = stages.current  # type: ignore[attr-defined]
            if params is not None:
                exc.gobuild_hint = failure_hint(params, exc)  # type: ignore[attr-defined]
        await report_failure(params or _unchecked(parameters), stages.current, exc)
        raise
    result = BuildResult.collect(params, version, source, binaries, image, published, stages)
    await report_success(result)
    return result


async def run_build(values: dict[str, Any], params: BuildParams) -> State[BuildResult]:
    """One flow run as the command line starts it. A build that surely needs the
    engine (``params``, already validated) starts opening its Dagger session at
    once, while Prefect creates and starts the run, instead of after: the run
    joins that session (``tasks/session.session_opened_early``). Any other build
    connects only once it knows the cache cannot serve it."""
    async with session_opened_early(params.surely_needs_engine):
        with no_ca_bundle_for_plain_http(), shared_prefect_client():
            return await multistage_build(**values, return_state=True)


CLI_TAIL_LINES = 20


def _unchecked(parameters: dict[str, Any]) -> BuildParams:
    """Parameters that failed validation, as far as a failure report needs them
    (the app's name); never used to build anything."""
    fields = BuildParams.model_fields
    known = {k: v for k, v in _defaults_resolved(parameters).items() if k in fields}
    try:
        unchecked = BuildParams.model_construct(**known)
        unchecked.resolved_app_name()
        return unchecked
    except Exception:
        return BuildParams.model_construct(app_name="unknown")


def _defaults_resolved(parameters: dict[str, Any]) -> dict[str, Any]:
    return {k: v.default if isinstance(v, FieldInfo) else v for k, v in parameters.items()}


def _signature_from_model() -> inspect.Signature:
    """Expose each ``BuildParams`` field as a flow parameter with its title,
    description and default, so the model stays the one place they are defined."""
    params = []
    for name, f in BuildParams.model_fields.items():
        default = f.get_default(call_default_factory=True)
        params.append(
            inspect.Parameter(
                name,
                inspect.Parameter.KEYWORD_ONLY,
                default=Field(
                    default=default, description=f.description, json_schema_extra={"title": f.title}
                ),
                annotation=f.annotation,
            )
        )
    return inspect.Signature(params, return_annotation=BuildResult)


multistage_build.__signature__ = _signature_from_model()  # type: ignore[attr-defined]
multistage_build = flow(
    name="multistage-build",
    description="Build a Go service into a small multi-platform container image with Dagger.",
    flow_run_name="build {source}",
)(multistage_build)


def parse_args(argv: list[str]) -> dict[str, Any]:
    ap = argparse.ArgumentParser(
        prog="python -m flows.build",
        description="Build a Go service into a container image (Prefect flow multistage-build).",
    )
    ap.add_argument("source", help="local directory with go.mod, or a git URL")
    ap.add_argument("--ref", dest="git_ref", help="branch, tag or full commit SHA of a git source")
    ap.add_argument("--platform", dest="platforms", action="append", help="repeatable")
    ap.add_argument("--tag", dest="image_refs", action="append", help="reference to publish")
    ap.add_argument("--output", help="OCI tarball path (default build/<app>.oci.tar)")
    ap.add_argument("--app-name")
    ap.add_argument("--module-dir", help="directory of the Go module inside the source")
    ap.add_argument("--main-package")
    ap.add_argument(
        "--extra-package",
        dest="extra_packages",
        action="append",
        help="another main package to put in the image, at /usr/local/bin/<name>, repeatable",
    )
    ap.add_argument("--version")
    ap.add_argument("--version-variable", help="Go variable that receives the version")
    ap.add_argument(
        "--ldflags",
        help="extra linker flags; ${COMMIT}, ${COMMIT_DATE}... expanded (write --ldflags='-X ...')",
    )
    ap.add_argument("--builder-image")
    ap.add_argument("--runtime-image")
    ap.add_argument("--build-tag", dest="build_tags", action="append")
    ap.add_argument(
        "--runtime-arg",
        dest="runtime_args",
        action="append",
        help="default argument of the image (CMD), repeatable; write --runtime-arg=--flag=x "
        "for one that starts with -",
    )
    ap.add_argument(
        "--runtime-env", action="append", help="KEY=VALUE in the image's environment, repeatable"
    )
    ap.add_argument(
        "--expose", dest="exposed_ports", action="append", help="PORT[/udp] to expose, repeatable"
    )
    ap.add_argument("--runtime-workdir", help="working directory of the image")
    ap.add_argument("--runtime-user", help="UID[:GID] or user name (default 65532)")
    ap.add_argument(
        "--runtime-file",
        dest="runtime_files",
        action="append",
        help="SRC[:DEST] of the module to copy into the image, repeatable",
    )
    ap.add_argument("--label", dest="labels", action="append", help="KEY=VALUE, repeatable")
    ap.add_argument("--registry-secret-block")
    ap.add_argument("--git-secret-block", help="Secret block with a token for a private git URL")
    ap.add_argument(
        "--go-env",
        action="append",
        help="KEY=VALUE, repeatable: GOPROXY, GOPRIVATE, GONOPROXY, GONOSUMDB, GOSUMDB, "
        "GOINSECURE, GOFLAGS, GOVCS",
    )
    ap.add_argument(
        "--go-auth-secret-block", help="Secret block with a .netrc for private Go modules"
    )
    ap.add_argument("--tag-commit", action="store_true", default=None)
    ap.add_argument("--tag-nightly", action="store_true", default=None)
    ap.add_argument("--tag-latest", action="store_true", default=None)
    ap.add_argument("--no-checks", dest="run_checks", action="store_false", default=None)
    ap.add_argument(
        "--no-vet",
        dest="run_vet",
        action="store_false",
        default=None,
        help="leave go vet out of the checks (go test still runs)",
    )
    ap.add_argument(
        "--no-gitignore",
        dest="use_gitignore",
        action="store_false",
        default=None,
        help="send what git ignores too (.dockerignore alone decides, as in docker build)",
    )
    ap.add_argument("--force", dest="force_rebuild", action="store_true", default=None)
    ap.add_argument(
        "--timeout-minutes",
        type=float,
        help="stop the build, failed, after this long (default 120)",
    )
    ap.add_argument(
        "--progress",
        choices=terminal.MODES,
        help="auto (default: compact on a terminal, else plain), plain (a line per step, "
        "and one at least every 10 s while a step runs), quiet (only the result)",
    )
    ns = vars(ap.parse_args(argv))
    for name, flag in (
        ("labels", "--label"),
        ("go_env", "--go-env"),
        ("runtime_env", "--runtime-env"),
    ):
        if ns.get(name):
            pairs = [item.partition("=") for item in ns[name]]
            bad = [k for k, sep, _ in pairs if not sep]
            if bad:
                ap.error(f"{flag} {bad[0]!r}: expected KEY=VALUE")
            ns[name] = {k: v for k, _, v in pairs}
    return {k: v for k, v in ns.items() if v is not None}


class _WithoutTraceback(logging.Formatter):
    """Formats a record as ``inner`` does, minus its traceback."""

    def __init__(self, inner: logging.Formatter) -> None:
        super().__init__()
        self.inner = inner

    def format(self, record: logging.LogRecord) -> str:
        saved = record.exc_info, record.exc_text, record.stack_info
        record.exc_info, record.exc_text, record.stack_info = None, None, None
        try:
            return self.inner.format(record)
        finally:
            record.exc_info, record.exc_text, record.stack_info = saved


def quiet_console_tracebacks() -> None:
    """Keep Python tracebacks off the terminal: a failed build ends with
    :func:`failure_summary`, and the tracebacks stay in the run's logs in the
    Prefect API and UI (only the console handlers' formatting changes)."""
    from prefect.logging.handlers import PrefectConsoleHandler

    loggers = [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]
    for logger in loggers:
        for handler in getattr(logger, "handlers", []):
            if isinstance(handler, PrefectConsoleHandler) and not isinstance(
                handler.formatter, _WithoutTraceback
            ):
                handler.setFormatter(_WithoutTraceback(handler.formatter or logging.Formatter()))


def failure_summary(exc: BaseException) -> str:
    """The last thing a terminal user reads: the reason, and for a failed command
    the end of what it printed (the compiler's or the test's own words), which
    Prefect's tracebacks above would otherwise bury."""
    message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    stage = getattr(exc, "gobuild_stage", "")
    lines = [f"error: build failed{f' in {stage}' if stage else ''}: {message}"]
    if is_exec_error(exc):
        for name, text in (("stdout", exc.stdout), ("stderr", exc.stderr)):
            tail, _ = output_tail(text, CLI_TAIL_LINES)
            if tail:
                lines += [f"--- last lines of {name} ---", tail]
    hint = getattr(exc, "gobuild_hint", "")
    if hint:
        lines.append(f"hint: {hint}")
    return "\n".join(lines)


@contextlib.contextmanager
def _api(url: str | None) -> Iterator[None]:
    """Talk to the local server at ``url`` (see :mod:`flows.local_api`) instead of
    a temporary one per process; ``None`` keeps the configured API."""
    if url is None:
        yield
        return
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: url}):
        yield


def main(argv: list[str] | None = None) -> int:
    values = parse_args(sys.argv[1:] if argv is None else argv)
    progress_mode = values.pop("progress", "auto")  # not a flow parameter
    try:
        params = parse_params(values)
        prepare_output(params)
        preflight()  # before Prefect starts: a missing engine is a one-line answer, at once
    except (ParamsError, EngineUnavailable) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        api_url = local_api.ensure(quiet=progress_mode == "quiet") if local_api.wanted() else None
    except local_api.LocalAPIError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    terminal.start_cli(progress_mode)  # stderr: a line per step, and a heartbeat
    quiet_console_tracebacks()
    try:
        with _api(api_url):
            state = asyncio.run(run_build(values, params))
    except PrefectAPIUnavailable as exc:
        terminal.stop_cli()
        where = "the local server, see GOBUILD_LOCAL_API" if api_url else "PREFECT_API_URL"
        print(f"error: Prefect API ({where}): {exc}", file=sys.stderr)
        return 2
    terminal.stop_cli()
    if not state.is_completed():
        exc = state.result(raise_on_failure=False)
        print(failure_summary(exc), file=sys.stderr)
        return 1
    result: BuildResult = state.result()
    for ref in result.references:
        print(ref)
    print(f"{result.tarball} {result.digest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
