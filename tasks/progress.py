"""What a build is doing, told once and shown twice: in the run's logs and on the terminal.

A build spends most of its time in a few engine commands, and a user who sees
nothing for a minute assumes it hangs. So every step says when it starts and how
long it took, every cache decision says what it decided, and every result says
its digest. Each of those is one log record on the run logger's child
``gobuild`` (``prefect.flow_runs.gobuild`` or ``prefect.task_runs.gobuild``):

- Prefect's API handler, on the parent logger, sends it to the run's logs, so the
  UI and the API tell the story of every run (CLI, deployment, worker alike).
- In CLI mode (``python -m flows.build --progress …``) a terminal handler
  (:mod:`flows.terminal`) on the same child loggers prints it on stderr, with the time since the
  start, and prints a heartbeat line while a step runs, so the terminal is never
  silent for longer than ``HEARTBEAT_SECONDS``. Prefect's own INFO chatter ("Created
  task run…", "Finished in state…") is kept off the console by a filter on the
  console handler only; the API handler still gets it, and the UI keeps it.

Nothing secret goes into these lines: commands are shown with their flag values
for ``-ldflags`` elided, URLs without credentials, and never an environment, a
``.netrc`` or a token (the no-leak tests read the run's logs back from the API).

Engine commands are timed one by one. A Dagger chain is lazy and runs at its first
leaf call, so :func:`engine_steps` evaluates the builder command by command
(``Container.sync``); the engine caches each step, so the final export does not
run them again. The builder is shared by every platform of a run, which compile
concurrently: its commands are run (and logged) once per run by whichever compile
gets there first, and the others say they reuse it.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
import shlex
import sys
import tarfile
import time
import weakref
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO
from urllib.parse import urlsplit, urlunsplit

if TYPE_CHECKING:
    import dagger

MODE_ENV = "GOBUILD_PROGRESS"  # set by the CLI (flows/terminal.py): "plain", "tty" or "quiet"
CHILD = "gobuild"
LOGGER_NAMES = (f"prefect.flow_runs.{CHILD}", f"prefect.task_runs.{CHILD}", CHILD)
# Flags whose values may carry anything a user put there (-X main.key=…): not shown.
ELIDED_FLAGS = frozenset({"-ldflags", "-gcflags", "-asmflags"})


# --------------------------------------------------------------------------- events


def logger() -> logging.Logger | logging.LoggerAdapter:
    """The run logger's ``gobuild`` child, so records reach the run's logs in the
    API; outside a run (the stages' plain functions), the ``gobuild`` logger."""
    from prefect.exceptions import MissingContextError
    from prefect.logging import get_run_logger

    try:
        return get_run_logger().getChild(CHILD)  # type: ignore[attr-defined]
    except MissingContextError:
        return logging.getLogger(CHILD)


def _log(message: str, *, key: str = "", phase: str = "note", seconds: float | None = None) -> None:
    extra: dict[str, Any] = {"gobuild_phase": phase, "gobuild_step": key}
    if seconds is not None:
        extra["gobuild_seconds"] = round(seconds, 3)
    logger().info(message, extra=extra)


def note(message: str) -> None:
    """One line of the story that is neither the start nor the end of a step."""
    _log(message)


def seconds_text(seconds: float) -> str:
    return f"{seconds:.1f}s"


def size_text(size: int) -> str:
    value = float(size)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    raise AssertionError("unreachable")


def command_text(args: Sequence[str]) -> str:
    """A command as a shell would show it, with the values of ``ELIDED_FLAGS`` cut:
    a user may link a key into a binary with ``-ldflags -X``, and a log line is no
    place for it."""
    shown: list[str] = []
    elide = False
    for arg in args:
        shown.append("…" if elide else shlex.quote(arg))
        elide = arg in ELIDED_FLAGS
    return " ".join(shown)


def safe_url(url: str) -> str:
    """A URL without user or password (the parameter check refuses credentials in a
    git URL; this keeps a log line safe whatever reached it)."""
    if "://" not in url:
        return url  # a path, or scp-like git@host:path (no password possible)
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable URL>"
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


class Step:
    """A step in progress; ``outcome`` is appended to its end line (a digest, a size)."""

    def __init__(self, scope: str, what: str) -> None:
        self.key = f"{scope}: {what}" if what else scope
        self.outcome = ""


@contextlib.asynccontextmanager
async def step(scope: str, what: str, *, done: str = "done in") -> AsyncIterator[Step]:
    """Log ``<scope>: <what> started``, then ``… done in N.Ns`` (or ``failed after``).

    The end line carries no exception text: the failure report has the command's
    output, which the engine scrubbed of secrets, and that is the place for it."""
    current = Step(scope, what)
    _log(f"{current.key} started", key=current.key, phase="start")
    started = time.monotonic()
    try:
        yield current
    except BaseException as exc:
        seconds = time.monotonic() - started
        word = "stopped" if isinstance(exc, asyncio.CancelledError) else "failed"
        message = f"{current.key} {word} after {seconds_text(seconds)}"
        _log(message, key=current.key, phase="end", seconds=seconds)
        raise
    seconds = time.monotonic() - started
    outcome = f": {current.outcome}" if current.outcome else ""
    message = f"{current.key} {done} {seconds_text(seconds)}{outcome}"
    _log(message, key=current.key, phase="end", seconds=seconds)


# --------------------------------------------------------------------------- engine commands


@dataclass
class _Shared:
    """A builder command of a run: running or run, and by which compile."""

    task: asyncio.Task[Any]
    by: str


# Per flow run (its EngineScope): the builder commands already run or running,
# so that the platforms of one run share them.
_SHARED: weakref.WeakKeyDictionary[Any, dict[tuple[int, tuple[str, ...]], _Shared]] = (
    weakref.WeakKeyDictionary()
)


async def engine_steps(scope: str, steps: Sequence[tuple[Sequence[str], dagger.Container]]) -> None:
    """Run ``steps`` (each command with the container it ends in) one at a time,
    each logged with its duration, so a run's logs say how long each command took.

    Within one flow run the steps are shared: the first caller runs them, the
    others wait for that and log that they reused it (so each command has one
    ``done in`` line per run). A failed step is forgotten, so a retried task runs
    it again. Outside a flow run nothing is shared."""
    from tasks.session import current_scope

    owner = current_scope()
    memo = _SHARED.setdefault(owner, {}) if owner is not None else {}
    for index, (args, ctr) in enumerate(steps):
        what = command_text(args)
        key = (index, tuple(args))
        shared = memo.get(key)
        if shared is None:
            task = asyncio.ensure_future(_timed_sync(scope, what, ctr))
            task.add_done_callback(lambda done, key=key: _forget_failed(memo, key, done))
            memo[key] = _Shared(task, scope)
            try:
                await asyncio.shield(task)
            except asyncio.CancelledError:
                # Only a run being stopped cancels a compile (timeout_minutes), and
                # every platform's with it: the command stops too, and says so.
                task.cancel()
                raise
        elif shared.task.done():
            await shared.task  # raises if it failed, as the command would have here
            note(f"{scope}: {what} reused from {shared.by}")
        else:
            async with step(scope, f"{what} (run by {shared.by})", done="reused after"):
                await asyncio.shield(shared.task)


async def _timed_sync(scope: str, what: str, ctr: dagger.Container) -> str:
    async with step(scope, what):
        return await ctr.sync()  # type: ignore[return-value]


def _forget_failed(memo: dict, key: tuple, task: asyncio.Task) -> None:
    """Drop a failed command from the run's memo (reading its exception, so asyncio
    does not report it as never retrieved): a retry must run it again."""
    failed = task.cancelled() or task.exception() is not None
    entry = memo.get(key)
    if failed and entry is not None and entry.task is task:
        del memo[key]


# --------------------------------------------------------------------------- stages


def cache_key(task: Any, args: Sequence[Any]) -> str:
    """The key under which Prefect keeps ``task``'s result for ``args`` (its own
    ``cache_key_fn``), for saying what a cached stage was served from."""
    fn = getattr(task, "cache_key_fn", None)
    if fn is None:
        return ""
    try:
        bound = inspect.signature(task.fn).bind(*args).arguments
        return str(fn(None, dict(bound)))
    except Exception:
        return ""


def stage_started(name: str) -> None:
    _log(f"{name} started", key=name, phase="start")


def stage_finished(name: str, seconds: float, *, cached: bool, key: str, result: Any) -> None:
    if cached:
        shown = f"key {key[:16]}…" if key else "no key"
        _log(f"{name}: served from cache ({shown})", key=name, phase="end", seconds=seconds)
    else:
        _log(f"{name} done in {seconds_text(seconds)}", key=name, phase="end", seconds=seconds)
    for line in describe(name, result):
        note(line)


def stage_failed(name: str, seconds: float) -> None:
    _log(f"{name} failed after {seconds_text(seconds)}", key=name, phase="end", seconds=seconds)


def describe(name: str, result: Any) -> list[str]:
    """What a stage produced, as log lines: the source and its digest, a binary's
    size and digest, the image's digest and size per platform."""
    from tasks.assemble import ImageArtifact
    from tasks.compile import CompiledBinary
    from tasks.source import SourceInfo

    if isinstance(result, SourceInfo):
        return [source_line(name, result)]
    if isinstance(result, CompiledBinary):
        return [f"{name}: binary {size_text(result.size)}, {result.sha256}, {result.go_version}"]
    if isinstance(result, ImageArtifact):
        sizes = image_sizes(Path(result.path))
        lines = [
            f"{name}: {platform} image {digest}"
            + (f" ({size_text(sizes[platform])})" if platform in sizes else "")
            for platform, digest in result.platforms.items()
        ]
        kind = "image index" if len(result.platforms) > 1 else "image"
        lines.append(f"{name}: {kind} {result.digest} in {result.path} ({size_text(result.size)})")
        return lines
    if name == "publish" and result == {}:
        return [f"{name}: no references given, nothing pushed (the OCI tarball is the result)"]
    return []


def source_line(name: str, source: Any) -> str:
    if source.kind == "git":
        return (
            f"{name}: git {safe_url(source.location)} at {source.ref or 'HEAD'}: commit "
            f"{source.commit}, tree digest {source.digest}"
        )
    commit = f"commit {source.commit}" if source.commit else "not a git checkout"
    excluded = f" ({size_text(source.bytes_excluded)} excluded)" if source.bytes_excluded else ""
    return (
        f"{name}: local directory {source.location} ({commit}): {source.files} files, "
        f"{size_text(source.bytes_sent)} sent{excluded}, digest {source.digest}"
    )


def image_sizes(tarball: Path) -> dict[str, int]:
    """Per platform, what a registry stores for the image: manifest, config and
    layers (compressed). Empty when the tarball cannot be read."""
    from tasks.oci_layout import Layout

    try:
        with tarfile.open(tarball) as tar:
            return {
                image.platform: int(image.descriptor.get("size", 0))
                + int(image.manifest.get("config", {}).get("size", 0))
                + sum(int(layer.get("size", 0)) for layer in image.manifest.get("layers", []))
                for image in Layout(tar).images()
            }
    except (OSError, ValueError, KeyError, tarfile.TarError):
        return {}


def cache_decision(message: str) -> None:
    """Why the run does (or does not) need the engine; ``cache: …``."""
    note(f"cache: {message}")


def slot_waiting(name: str, in_use: int, slots: int) -> None:
    _log(
        f"waiting for an engine slot ({in_use} of {slots} in use; limit {name!r})",
        key="engine slot",
        phase="start",
    )


def slot_acquired(name: str, seconds: float) -> None:
    _log(
        f"engine slot: acquired after {seconds_text(seconds)} (limit {name!r})",
        key="engine slot",
        phase="end",
        seconds=seconds,
    )


def build_finished(result: Any) -> None:
    refs = "".join(f", pushed {ref}" for ref in result.references)
    note(
        f"build: finished {result.app} {result.version}: image {result.digest} in "
        f"{result.tarball}{refs}"
    )


def build_failed(stage: str) -> None:
    note(f"build: failed in {stage}")


# --------------------------------------------------------------------------- Dagger's own stream


def dagger_log_output() -> TextIO | None:
    """Where the Dagger SDK sends its engine's progress stream: stderr with
    ``--progress plain`` (read by :func:`tasks.session.engine_session`), else nowhere
    (a TTY has our own status line, and quiet is quiet)."""
    return sys.stderr if os.environ.get(MODE_ENV) == "plain" else None
