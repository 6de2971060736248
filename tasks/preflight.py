"""Finding an engine before anything else: refuse at once, in one line, when none
can be reached.

Without this the SDK downloads its CLI, and the CLI then fails (or waits) on a
runtime that is not there, with a traceback. The rules are the Dagger CLI's own
(dagger/dagger v0.21, ``engine/client/drivers``), so what Dagger accepts is
accepted here: a running session, a CLI of the user's choosing, a runner host, or
the first local container runtime on PATH, which must answer.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import re
import shutil
import signal
import socket
import subprocess
import time

ENGINE_HELP = (
    "Dagger needs a container runtime such as Docker (or DAGGER_SESSION_PORT/"
    "DAGGER_SESSION_TOKEN of a running session, or _EXPERIMENTAL_DAGGER_RUNNER_HOST "
    "for a remote engine)"
)


class EngineUnavailable(RuntimeError):
    """No Dagger engine can be reached; the message says what to set up."""


def preflight() -> None:
    """Refuse at once, in one line, when the SDK could not reach an engine.

    Without this the SDK downloads its CLI, and the CLI then fails (or waits) on
    a runtime that is not there, with a traceback. The checks follow the order
    in which the SDK and its CLI look for an engine, and accept exactly what
    they would accept: a running session (``DAGGER_SESSION_PORT`` and
    ``DAGGER_SESSION_TOKEN``), a CLI of the user's choosing
    (``_EXPERIMENTAL_DAGGER_CLI_BIN``), a runner host
    (``_EXPERIMENTAL_DAGGER_RUNNER_HOST``), else a local container runtime.
    Nothing is cached: an engine started a moment ago counts on the next call.
    """
    if os.environ.get("DAGGER_SESSION_PORT"):
        if not os.environ.get("DAGGER_SESSION_TOKEN"):
            raise EngineUnavailable("DAGGER_SESSION_PORT is set but DAGGER_SESSION_TOKEN is not")
        port = os.environ["DAGGER_SESSION_PORT"]
        try:
            with socket.create_connection(("127.0.0.1", int(port)), timeout=2):
                pass
        except (OSError, ValueError) as exc:
            raise EngineUnavailable(
                f"no Dagger session answers on 127.0.0.1:{port} (DAGGER_SESSION_PORT): "
                f"{exc.__class__.__name__}. {ENGINE_HELP}"
            ) from None
        return
    if cli_bin := os.environ.get("_EXPERIMENTAL_DAGGER_CLI_BIN"):
        # The SDK runs this instead of its own CLI; how it finds an engine is its
        # business (it may be a wrapper that needs no runtime at all).
        if not shutil.which(cli_bin):
            raise EngineUnavailable(
                f"_EXPERIMENTAL_DAGGER_CLI_BIN={cli_bin!r} is not an executable file; "
                "unset it to let the SDK use its own Dagger CLI"
            )
        return
    if runner := os.environ.get("_EXPERIMENTAL_DAGGER_RUNNER_HOST"):
        _check_runner_host(runner)
        return
    _container_runtime_reachable(_RUNTIME_ORDER, via="")


# How the Dagger CLI finds an engine (dagger/dagger v0.21, engine/client/drivers):
# its runner host is _EXPERIMENTAL_DAGGER_RUNNER_HOST, else
# image://registry.dagger.io/engine:v<version>. For image:// and container:// it
# goes through these runtimes IN THIS ORDER (container.go, register("image", ...))
# and takes the first whose binary is on PATH; that one's check must then succeed,
# or the CLI fails without trying the next (driver.go, GetDriver). Docker
# contexts (Colima, Rancher Desktop, rootless, DOCKER_HOST=ssh://) work because
# `docker version` itself honours DOCKER_HOST and DOCKER_CONTEXT.
_RUNTIME_CHECKS: dict[str, tuple[str, ...]] = {
    "docker": ("docker", "version"),  # docker.go, Available
    "apple": ("container", "system", "status"),  # apple.go: Apple's `container` CLI
    "podman": ("podman", "version"),
    "finch": ("finch", "version"),
    "nerdctl": ("nerdctl", "version"),
}
_RUNTIME_ORDER = tuple(_RUNTIME_CHECKS)
_RUNTIME_START_HINTS = {
    "docker": "start the Docker daemon, or select a running one with DOCKER_HOST or DOCKER_CONTEXT",
    "apple": "start it with `container system start`",
    "podman": "start it (`podman machine start` on macOS and Windows)",
    "finch": "start it with `finch vm start`",
    "nerdctl": "make sure containerd runs and this user may use it",
}
# Runner-host schemes and the runtimes each may use (container.go, init).
_RUNTIME_SCHEMES: dict[str, tuple[str, ...]] = {
    "image": _RUNTIME_ORDER,
    "container": _RUNTIME_ORDER,
    "docker-image": ("docker",),  # legacy
    "docker-container": ("docker",),  # legacy
    **{f"{kind}+{name}": (name,) for kind in ("image", "container") for name in _RUNTIME_ORDER},
}
# Schemes that dial an engine somewhere else (dial.go, cloud.go): nothing local to
# check except a unix socket, and a network probe would be slow or wrong.
_DIAL_SCHEMES = ("tcp", "unix", "ssh", "kube-pod", "tls", "dagger-cloud")
PREFLIGHT_TIMEOUT_DEFAULT = 4.0


def _check_runner_host(runner: str) -> None:
    """Accept a runner host the CLI has a driver for, checking what can be checked
    locally: the runtime behind image:// and container://, a unix socket's listener."""
    match = re.match(r"([A-Za-z][A-Za-z0-9+.-]*)://", runner)
    scheme = match[1].lower() if match else ""
    where = f"_EXPERIMENTAL_DAGGER_RUNNER_HOST={runner}"
    if scheme in _RUNTIME_SCHEMES:
        _container_runtime_reachable(_RUNTIME_SCHEMES[scheme], via=where)
    elif scheme == "unix":
        path = runner.split("://", 1)[1]
        try:
            with socket.socket(socket.AF_UNIX) as s:
                s.settimeout(1)
                s.connect(path)
        except OSError as exc:
            raise EngineUnavailable(
                f"no Dagger engine answers on {path} ({where}): {exc.strerror or exc}"
            ) from None
    elif scheme not in _DIAL_SCHEMES:
        known = ", ".join(f"{s}://" for s in (*_DIAL_SCHEMES, "image", "container"))
        raise EngineUnavailable(
            f"{where}: the Dagger CLI has no driver for scheme {scheme!r} (expected "
            f"{known}, or image+RUNTIME:// / container+RUNTIME:// with RUNTIME one of "
            f"{', '.join(_RUNTIME_ORDER)})"
        )


def _container_runtime_reachable(runtimes: tuple[str, ...], *, via: str) -> None:
    """Pass when the runtime the Dagger CLI would pick answers its check, else raise
    one line naming what was tried and what to set.

    Each check runs with a short timeout (``GOBUILD_PREFLIGHT_TIMEOUT_SECONDS``,
    default 4 s): the CLI itself would wait without limit on a hung daemon, and a
    user deserves an answer before that. Runtimes not on PATH cost nothing.
    """
    timeout = _preflight_timeout()
    installed = [name for name in runtimes if shutil.which(_RUNTIME_CHECKS[name][0])]
    tried = ", ".join(_RUNTIME_CHECKS[name][0] for name in runtimes)
    for_via = f" for {via}" if via else ""
    if not installed:
        missing = f"{tried} is not" if len(runtimes) == 1 else f"none of {tried} is"
        raise EngineUnavailable(
            f"no Dagger engine is reachable: {missing} on PATH{for_via}. {ENGINE_HELP}"
        )
    chosen = installed[0]
    ok, detail = _run_checks([_RUNTIME_CHECKS[chosen]], timeout)[0]
    if ok:
        return
    # The CLI would fail here. Say whether another installed runtime answers, and
    # how to make the CLI use it.
    others = installed[1:]
    answering = [
        name
        for name, (other_ok, _) in zip(
            others, _run_checks([_RUNTIME_CHECKS[n] for n in others], timeout), strict=True
        )
        if other_ok
    ]
    command = " ".join(_RUNTIME_CHECKS[chosen])
    message = (
        f"no Dagger engine is reachable: the Dagger CLI would use {_RUNTIME_CHECKS[chosen][0]}"
        f"{for_via}{f' (the first of {tried} on PATH)' if len(runtimes) > 1 else ''}, "
        f"but `{command}` {detail}; {_RUNTIME_START_HINTS[chosen]}"
    )
    if answering:
        message += (
            f", or use {_RUNTIME_CHECKS[answering[0]][0]}, which answers, with "
            f"_EXPERIMENTAL_DAGGER_RUNNER_HOST=image+{answering[0]}://{_engine_image()}"
        )
    raise EngineUnavailable(f"{message}. {ENGINE_HELP}")


def _preflight_timeout() -> float:
    """The per-check cap; an unusable value falls back to the default rather than
    turning a typo into a refusal to build."""
    raw = os.environ.get("GOBUILD_PREFLIGHT_TIMEOUT_SECONDS", "")
    try:
        value = float(raw) if raw else PREFLIGHT_TIMEOUT_DEFAULT
    except ValueError:
        return PREFLIGHT_TIMEOUT_DEFAULT
    return value if 0 < value <= 600 else PREFLIGHT_TIMEOUT_DEFAULT


def _run_checks(commands: list[tuple[str, ...]], timeout: float) -> list[tuple[bool, str]]:
    """Run the commands concurrently, each cut off after ``timeout`` seconds; for each,
    whether it exited 0 and else why not, in one line.

    Each runs in its own process group so that a cut-off kills what it started
    too (a shell script's ``sleep``, docker's ``ssh``), not just the first process.
    """
    procs: list[subprocess.Popen[str] | str] = []
    for argv in commands:
        try:
            procs.append(
                subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                    errors="replace",
                    start_new_session=True,
                )
            )
        except OSError as exc:  # vanished from PATH, or not executable
            procs.append(f"could not run: {exc.strerror or exc}")
    deadline = time.monotonic() + timeout
    results: list[tuple[bool, str]] = []
    for proc in procs:
        if isinstance(proc, str):
            results.append((False, proc))
            continue
        try:
            out, err = proc.communicate(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            results.append((False, f"did not answer within {timeout:g} s"))
            continue
        if proc.returncode == 0:
            results.append((True, ""))
        else:
            lines = [line.strip() for line in (err or out).splitlines() if line.strip()]
            why = _shorten(lines[-1]) if lines else "no output"
            results.append((False, f"failed (exit status {proc.returncode}): {why}"))
    return results


def _shorten(line: str, keep: int = 150) -> str:
    """Head and tail of a long line: docker puts the cause at the end of one long
    line (``error during connect: … stderr=ssh: connect to host …: Connection refused``)."""
    return line if len(line) <= 2 * keep + 5 else f"{line[:keep]} … {line[-keep:]}"


def _kill_group(proc: subprocess.Popen[str]) -> None:
    """Kill a cut-off check with everything it started, and reap it without reading
    its pipes (a straggler holding them open must not block us)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (AttributeError, OSError):  # no process groups (Windows), or already gone
        proc.kill()
    for pipe in (proc.stdout, proc.stderr):
        if pipe is not None:
            pipe.close()
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=1)


def _engine_image() -> str:
    """The engine image the SDK's CLI would run: registry.dagger.io/engine at the
    CLI's version, which the SDK pins to its own."""
    try:
        version = importlib.metadata.version("dagger-io")
    except importlib.metadata.PackageNotFoundError:
        return "registry.dagger.io/engine:<version>"
    return f"registry.dagger.io/engine:v{version}"
