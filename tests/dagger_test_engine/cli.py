"""A stand-in for the ``dagger`` CLI's ``session`` command, for a running test engine.

Given ``_EXPERIMENTAL_DAGGER_CLI_BIN``, the dagger-io SDK starts a session itself
(``dagger/provisioning/_session.py``): it runs
``<bin> session --label dagger.io/sdk.name:python --label … [--workdir ABS]``,
reads ONE JSON line ``{"port": N, "session_token": "…"}`` from stdout, and keeps
the process until it closes its stdin, expecting exit status 0. The real CLI
``chdir``s to ``--workdir`` (default: its own working directory, or
``$DAGGER_WORKDIR``), so that is the session's working directory.

This script does the same against an already running ``TestEngine``: it asks
``POST /_test/sessions`` (admin token) for a new session of that engine, prints
it, waits for stdin to close, then ends the session. Only the standard library
is imported, to start quickly::

    python -m tests.dagger_test_engine.cli --engine http://127.0.0.1:PORT \\
        --admin-token-file FILE session --label … [--workdir DIR]

``pytest_plugin.dagger_cli_bin`` writes an executable wrapper for it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import urllib.error
import urllib.request
from base64 import b64encode
from pathlib import Path


def _post(engine: str, token: str, path: str, body: dict) -> dict:
    req = urllib.request.Request(
        engine.rstrip("/") + path,
        data=json.dumps(body).encode(),
        headers={
            "Content-Type": "application/json",
            "Authorization": "Basic " + b64encode(f"{token}:".encode()).decode(),
        },
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read() or b"{}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dagger (test engine stand-in)")
    parser.add_argument("--engine", default=os.environ.get("DAGGER_TEST_ENGINE_URL", ""))
    parser.add_argument(
        "--admin-token-file", type=Path, default=os.environ.get("DAGGER_TEST_ENGINE_TOKEN_FILE")
    )
    sub = parser.add_subparsers(dest="command", required=True)
    session = sub.add_parser("session")
    session.add_argument("--label", action="append", default=[])
    session.add_argument("--workdir", default="")
    session.add_argument("--project", default="")
    session.add_argument("--load-workspace-modules", action="store_true")
    args = parser.parse_args(argv)
    if not args.engine or not args.admin_token_file:
        print("no test engine given (--engine, --admin-token-file)", file=sys.stderr)
        return 2
    if args.project or args.load_workspace_modules:
        print("modules are not implemented by the dagger test engine", file=sys.stderr)
        return 2
    token = args.admin_token_file.read_text().strip()
    workdir = os.path.abspath(args.workdir or os.environ.get("DAGGER_WORKDIR") or os.getcwd())
    try:
        created = _post(
            args.engine, token, "/_test/sessions", {"workdir": workdir, "labels": args.label}
        )
    except (OSError, urllib.error.URLError) as exc:
        print(f"cannot reach the dagger test engine at {args.engine}: {exc}", file=sys.stderr)
        return 1

    session_token = created["session_token"]

    def end(*_: object) -> None:
        # if the engine is gone, so is the session
        with contextlib.suppress(OSError, urllib.error.URLError):
            _post(args.engine, token, "/_test/sessions/end", {"session_token": session_token})

    signal.signal(signal.SIGTERM, lambda *_: (end(), sys.exit(0)))
    print(json.dumps({"port": created["port"], "session_token": session_token}), flush=True)
    with contextlib.suppress(OSError, KeyboardInterrupt):
        sys.stdin.buffer.read()  # serve until the SDK closes our stdin
    end()
    return 0


if __name__ == "__main__":
    sys.exit(main())
