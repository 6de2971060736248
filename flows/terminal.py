"""The command line's live progress: the build's progress records on stderr.

``python -m flows.build --progress auto|plain|quiet`` (the words of ``docker buildx``).
The records are the ones :mod:`tasks.progress` sends to the run's logs, so the
terminal and the Prefect UI tell the same story; this module only decides how a
terminal shows them: ``plain`` one line per record with the time since the start,
and a ``<step> running Ns`` line at least every ``HEARTBEAT_SECONDS`` while a step
runs; ``tty`` (``auto`` on a terminal) the same with starts in a status line
rewritten in place; ``quiet`` nothing but the result. Prefect's own INFO chatter is
kept off the console (its API handler still gets it).
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any, TextIO

from tasks.progress import CHILD, LOGGER_NAMES, MODE_ENV

MODES = ("auto", "plain", "quiet")
HEARTBEAT_ENV = "GOBUILD_PROGRESS_HEARTBEAT_SECONDS"
# A line at least every 10 s while a build runs: the heartbeat comes earlier, so
# that a busy machine's scheduling delays still keep the gap under 10 s.
HEARTBEAT_SECONDS = 8.0


def resolve_mode(mode: str, stream: TextIO) -> str:
    """``auto`` is compact (``tty``) on a terminal and ``plain`` otherwise, as with
    ``docker buildx --progress auto``."""
    if mode not in MODES:
        raise ValueError(f"--progress: {mode!r} is not one of {', '.join(MODES)}")
    if mode != "auto":
        return mode
    is_tty = getattr(stream, "isatty", lambda: False)()
    return "tty" if is_tty and os.environ.get("TERM") != "dumb" else "plain"


class TerminalProgress(logging.Handler):
    """Prints the progress records on a terminal, as they come, with the time since
    the start; while steps run, a heartbeat thread adds ``<step> running Ns``
    lines, so the terminal is never quiet for longer than ``heartbeat`` seconds.

    ``tty`` is the compact form for a terminal: a step's start shows only in a
    status line rewritten in place (with each running step and its time), and the
    lines that stay are the ends, results and cache decisions.
    """

    def __init__(self, stream: TextIO, *, tty: bool = False, heartbeat: float = HEARTBEAT_SECONDS):
        super().__init__(logging.INFO)
        self.stream = stream
        self.tty = tty
        self.heartbeat = heartbeat
        self.started = time.monotonic()
        self.running: dict[str, float] = {}
        self.last_write = self.started
        self.last_message = ""
        self._status = ""
        self._guard = threading.RLock()  # between the logging thread and the heartbeat
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- records
    def emit(self, record: logging.LogRecord) -> None:
        phase = getattr(record, "gobuild_phase", None)
        if phase is None:
            return
        try:
            message = record.getMessage()
            key = getattr(record, "gobuild_step", "")
            with self._guard:
                now = time.monotonic()
                if phase == "start":
                    self.running[key] = now
                elif phase == "end":
                    self.running.pop(key, None)
                if self.tty and phase == "start":
                    self._render_status(now)
                    return
                self.last_message = message
                self._line(message, now)
        except Exception:
            self.handleError(record)

    # -- heartbeat
    def start(self) -> TerminalProgress:
        self._thread = threading.Thread(target=self._beat, name="gobuild-progress", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.clear_status()

    def _beat(self) -> None:
        while not self._stop.wait(1.0 if self.tty else 0.25):
            with self._guard:
                now = time.monotonic()
                if self.tty:
                    self._render_status(now)
                elif now - self.last_write >= self.heartbeat:
                    for text in self.heartbeat_lines(now):
                        self._line(text, now)

    def innermost(self) -> list[tuple[str, float]]:
        """Running steps that no other running step is part of (``compile linux/amd64``
        while its ``compile linux/amd64: go build …`` runs says nothing new)."""
        keys = list(self.running)
        return [
            (key, self.running[key])
            for key in keys
            if not any(other != key and other.startswith(key + ": ") for other in keys)
        ]

    def heartbeat_lines(self, now: float) -> list[str]:
        running = self.innermost()
        if running:
            return [f"{key} running {int(now - started)}s" for key, started in running]
        last = f" (last: {self.last_message})" if self.last_message else ""
        return [f"build: still running{last}"]

    # -- output
    def _line(self, text: str, now: float) -> None:
        self.clear_status()
        self.stream.write(f"[{now - self.started:6.1f}s] {text}\n")
        self.stream.flush()
        self.last_write = now
        if self.tty:
            self._render_status(now)

    def _render_status(self, now: float) -> None:
        running = self.innermost()
        if not running:
            self.clear_status()
            return
        # A compile waiting for a shared command says nothing the command's own
        # entry does not; on one line, leave it out.
        running = [(k, t) for k, t in running if " (run by " not in k] or running
        width = shutil.get_terminal_size((100, 24)).columns - 1
        text = " | ".join(f"{key} {int(now - started)}s" for key, started in running)
        text = f"[{now - self.started:6.1f}s] {text}"
        if len(text) > width:
            text = text[: max(width - 1, 0)] + "…"
        self.stream.write("\r\x1b[K" + text)
        self.stream.flush()
        self._status = text
        self.last_write = now

    def clear_status(self) -> None:
        """Take the status line off the terminal, so another line can be written."""
        with self._guard:
            if self._status:
                self.stream.write("\r\x1b[K")
                self.stream.flush()
                self._status = ""


class _ConsoleFilter(logging.Filter):
    """On Prefect's console handler in CLI mode: our records are the terminal
    handler's to show, and Prefect's below ``level`` are chatter there (the API
    handler, which has no such filter, still sends them to the run's logs)."""

    def __init__(self, level: int, terminal: TerminalProgress | None) -> None:
        super().__init__()
        self.level = level
        self.terminal = terminal

    def filter(self, record: logging.LogRecord) -> bool:
        if hasattr(record, "gobuild_phase") or record.levelno < self.level:
            return False
        if self.terminal is not None:  # a warning must not land inside the status line
            self.terminal.clear_status()
        return True


_CLI: dict[str, Any] = {}


def console_handlers() -> Iterator[logging.Handler]:
    from prefect.logging.handlers import PrefectConsoleHandler

    seen: set[int] = set()
    loggers = [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]
    for log in loggers:
        for handler in getattr(log, "handlers", []):
            if isinstance(handler, PrefectConsoleHandler) and id(handler) not in seen:
                seen.add(id(handler))
                yield handler


def start_cli(mode: str, stream: TextIO | None = None) -> str:
    """Show progress on ``stream`` (stderr) as ``mode`` says; -> the mode resolved
    (``plain``, ``tty`` or ``quiet``), also put in ``GOBUILD_PROGRESS`` for the
    session code (:func:`dagger_log_output`).

    Prefect's console keeps its warnings and errors in ``plain`` and ``tty``, and
    shows nothing in ``quiet``: the CLI prints the result, or the failure summary."""
    stop_cli()
    stream = stream or sys.stderr
    resolved = resolve_mode(mode, stream)
    os.environ[MODE_ENV] = resolved
    terminal = None
    if resolved != "quiet":
        heartbeat = float(os.environ.get(HEARTBEAT_ENV, HEARTBEAT_SECONDS))
        terminal = TerminalProgress(stream, tty=resolved == "tty", heartbeat=heartbeat)
        for name in LOGGER_NAMES:
            log = logging.getLogger(name)
            log.addHandler(terminal)
            if name == CHILD:
                log.setLevel(logging.INFO)
        terminal.start()
    level = logging.WARNING if resolved != "quiet" else logging.CRITICAL + 1
    console_filter = _ConsoleFilter(level, terminal)
    handlers = list(console_handlers())
    for handler in handlers:
        handler.addFilter(console_filter)
    _CLI.update(terminal=terminal, filter=console_filter, handlers=handlers)
    return resolved


def stop_cli() -> None:
    """End the heartbeat and take the handlers off, before the CLI prints its result."""
    terminal: TerminalProgress | None = _CLI.pop("terminal", None)
    console_filter = _CLI.pop("filter", None)
    for handler in _CLI.pop("handlers", []):
        handler.removeFilter(console_filter)
    if terminal is not None:
        terminal.stop()
        for name in LOGGER_NAMES:
            logging.getLogger(name).removeHandler(terminal)
