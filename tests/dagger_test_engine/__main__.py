"""Run the Dagger test engine as its own process.

Prints one JSON line ``{"port": N, "session_token": "..."}`` (the shape the real
``dagger session`` prints), plus the shell exports for convenience on stderr, and
serves until interrupted or until stdin closes with ``--until-stdin-closes``.
A Prefect deployment served in another process finds it through
``DAGGER_SESSION_PORT`` / ``DAGGER_SESSION_TOKEN``.

Invoked the way the SDK invokes the ``dagger`` CLI (``session --label …
[--workdir DIR]``), it runs one engine for that one session and stops when stdin
closes, so a wrapper script around it can serve as ``_EXPERIMENTAL_DAGGER_CLI_BIN``
on its own (each session then has an engine of its own; ``cli.py`` instead adds
sessions to a running engine, as the real CLI does).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import tempfile
import threading
from pathlib import Path

from .server import TestEngine


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["session"]:
        return session_main(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m tests.dagger_test_engine")
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0: ephemeral)")
    parser.add_argument("--token", default=None, help="session token (default: random)")
    parser.add_argument("--state-dir", type=Path, default=None, help="blobs and cache volumes")
    parser.add_argument("--until-stdin-closes", action="store_true")
    parser.add_argument("--env-file", type=Path, default=None, help="also write the exports here")
    parser.add_argument(
        "--workdir", type=Path, default=None, help="the session's working directory (default: cwd)"
    )
    args = parser.parse_args(argv)
    state = args.state_dir or Path(tempfile.mkdtemp(prefix="dagger-test-engine-"))
    te = TestEngine(state, token=args.token, port=args.port, workdir=args.workdir).start()
    print(json.dumps({"port": te.port, "session_token": te.token}), flush=True)
    exports = "".join(f"export {k}={v}\n" for k, v in te.env.items())
    print(
        "dagger test engine (a test double, not Dagger) listening; use:\n" + exports,
        file=sys.stderr,
        flush=True,
    )
    if args.env_file:
        args.env_file.write_text(exports)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    if args.until_stdin_closes:
        threading.Thread(target=lambda: (sys.stdin.read(), done.set()), daemon=True).start()
    done.wait()
    te.stop()
    return 0


def session_main(argv: list[str]) -> int:
    """``dagger session`` for one session of a fresh engine."""
    parser = argparse.ArgumentParser(prog="python -m tests.dagger_test_engine session")
    parser.add_argument("--label", action="append", default=[])
    parser.add_argument("--workdir", default="")
    args, _ = parser.parse_known_args(argv)
    workdir = args.workdir or os.environ.get("DAGGER_WORKDIR") or os.getcwd()
    state = Path(os.environ.get("DAGGER_TEST_ENGINE_STATE") or tempfile.mkdtemp(prefix="dte-"))
    te = TestEngine(state, workdir=workdir).start()
    print(json.dumps({"port": te.port, "session_token": te.token}), flush=True)
    with contextlib.suppress(OSError, KeyboardInterrupt):
        sys.stdin.buffer.read()
    te.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
