"""The API objects of the Dagger test engine and their resolvers.

Objects are lazy, like the real engine's: a resolver such as ``withExec`` only
records a thunk; the work happens when a leaf (``stdout``, ``export``, ``sync``,
``publish``...) forces it. Each object gets an opaque ID derived from the call
that made it (parent ID, field, arguments), so the same chain asked for twice is
the same object and is evaluated once per engine lifetime, as BuildKit would
cache it. Some calls are per client session, as in the real engine: a host read
(``host.directory``/``file``) happens when the field resolves and is kept for
that session unless ``noCache``; ``git`` lists the remote once per session;
``withRegistryAuth`` stores its credential in the session (``sessions.py``).

Field resolvers are methods named ``f_<fieldName>`` taking the GraphQL arguments
as keyword arguments (camelCase, as sent). A field without a method fails with
a clear "not implemented by the test engine" error instead of a wrong answer.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import os
import platform as host_platform
import re
import shutil
import stat
import subprocess
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from . import fs, patterns
from .fs import BlobStore, Entry, Tree
from .gitsource import (
    GitAuth,
    GitError,
    GitSources,
    GitURL,
    Remote,
    basic_auth_header,
    is_commit_sha,
    parse_git_url,
)
from .sessions import AuthAddressError, Session, current_session

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class EngineError(Exception):
    """A plain API error (the real engine's non-exec errors)."""


class ExecError(Exception):
    """A failed exec; ``extensions`` is what makes the SDK raise ``dagger.ExecError``."""

    def __init__(self, cmd: list[str], exit_code: int, stdout: str, stderr: str) -> None:
        super().__init__(
            f'process "{" ".join(cmd)}" did not complete successfully: exit code: {exit_code}'
        )
        self.extensions = {
            "_type": "EXEC_ERROR",
            "cmd": cmd,
            "exitCode": exit_code,
            "stdout": stdout,
            "stderr": stderr,
        }


def host_linux_platform() -> str:
    machine = host_platform.machine().lower()
    arch = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(
        machine, machine
    )
    return f"linux/{arch}"


def split_platform(p: str) -> tuple[str, str, str]:
    parts = p.split("/")
    if len(parts) not in (2, 3) or not all(parts):
        raise EngineError(f"invalid platform {p!r}")
    return parts[0], parts[1], parts[2] if len(parts) == 3 else ""


# --------------------------------------------------------------------------- state


@dataclass(frozen=True)
class Mount:
    path: str  # normalized container path, no leading "/"
    kind: str  # "cache" | "dir"
    cache_key: str = ""
    directory: Directory | None = None


@dataclass(frozen=True)
class SecretMount:
    """A secret a container's execs see (core/container.go ``ContainerSecret``):
    a file at ``path``, or the environment variable ``env``. It lives beside the
    rootfs, never in it: only execs see it (core/container_exec.go ~888-907
    mounts it per exec), so exports, ``file``/``directory``/``rootfs`` never
    contain it, and ``envVariables`` never lists it."""

    secret: Secret
    path: str = ""  # normalized container path, no leading "/"
    env: str = ""
    mode: int = 0o400

    @property
    def plaintext(self) -> str:
        return self.secret.plaintext


@dataclass(frozen=True)
class ContainerState:
    platform: str
    rootfs: Tree = field(default_factory=lambda: fs.EMPTY)
    base_ref: str = ""
    env: tuple[tuple[str, str], ...] = ()
    workdir: str = "/"
    user: str = ""
    entrypoint: tuple[str, ...] = ()
    default_args: tuple[str, ...] = ()
    labels: tuple[tuple[str, str], ...] = ()
    # withAnnotation, in order; a key set twice keeps both entries (the manifest
    # takes the last, engine/engineutil/containerimage.go ~41-44).
    annotations: tuple[tuple[str, str], ...] = ()
    exposed_ports: tuple[str, ...] = ()
    mounts: tuple[Mount, ...] = ()
    registry_auth: tuple[tuple[str, str, str], ...] = ()  # (address, username, secret id)
    secrets: tuple[SecretMount, ...] = ()
    last_exec: tuple[str, str, int] | None = None

    def env_dict(self) -> dict[str, str]:
        return dict(self.env)

    def with_env(self, name: str, value: str) -> ContainerState:
        """core/util.go AddEnv: a variable already set keeps its place."""
        if any(k == name for k, _ in self.env):
            env = [(k, value if k == name else v) for k, v in self.env]
        else:
            env = [*self.env, (name, value)]
        return replace(self, env=tuple(env))

    def image_config(self) -> dict[str, Any]:
        cfg: dict[str, Any] = {"Env": [f"{k}={v}" for k, v in self.env]}
        if self.entrypoint:
            cfg["Entrypoint"] = list(self.entrypoint)
        if self.default_args:
            cfg["Cmd"] = list(self.default_args)
        if self.user:
            cfg["User"] = self.user
        if self.workdir and self.workdir != "/":
            cfg["WorkingDir"] = self.workdir
        if self.labels:
            cfg["Labels"] = dict(self.labels)
        if self.exposed_ports:
            cfg["ExposedPorts"] = {p: {} for p in self.exposed_ports}
        return cfg


# --------------------------------------------------------------------------- objects


class Obj:
    """Base of all API objects: an ID, and a memoized lazy value."""

    TYPENAME = "Node"

    def __init__(self, engine: Engine, oid: str, thunk: Callable[[], Any]) -> None:
        self.engine = engine
        self.oid = oid
        self._thunk = thunk
        self._lock = threading.Lock()
        self._done = False
        self._value: Any = None

    def value(self) -> Any:
        with self._lock:
            if not self._done:
                self._value = self._thunk()
                self._done = True
                self._thunk = lambda: None
            return self._value

    def f_id(self) -> str:
        return self.oid

    def f_sync(self) -> str:
        self.value()
        return self.oid

    def child(self, cls: type[Obj], fieldname: str, args: dict[str, Any], thunk, *, fresh=False):
        return self.engine.make(cls, self.oid, fieldname, args, thunk, fresh=fresh)


class CacheVolume(Obj):
    TYPENAME = "CacheVolume"

    @property
    def key(self) -> str:
        return self.value()


class Secret(Obj):
    """A ``setSecret`` secret (core/schema/secret.go): its value is (name, handle).

    The handle is derived from the name alone (core/secret.go SetSecretHandle, the
    name HMAC'd for the calling client), and it is the secret's content digest, so
    execs that use two secrets of one name are the same exec to the cache
    (core/integration/secret_test.go TestSetSecretInModuleCaching). The plaintext
    is bound to the handle in the session (dagql/cache.go BindSessionResource,
    latest binding wins) and looked up when the secret is used: a later
    ``setSecret`` of the same name in the session changes what every secret of
    that name yields from then on."""

    TYPENAME = "Secret"

    @property
    def handle(self) -> str:
        return self.value()[1]

    @property
    def plaintext(self) -> str:
        value = self.engine.session().secret_values.get(self.handle)
        if value is None:
            raise EngineError(f"secret {self.value()[0]!r} is not bound in this session")
        return value

    def f_name(self) -> str:
        return self.value()[0]

    def f_plaintext(self) -> str:
        return self.plaintext


class EnvVariable(Obj):
    TYPENAME = "EnvVariable"

    def f_name(self) -> str:
        return self.value()[0]

    def f_value(self) -> str:
        return self.value()[1]


class Label(EnvVariable):
    TYPENAME = "Label"


class Port(Obj):
    TYPENAME = "Port"

    def f_port(self) -> int:
        return int(self.value().split("/")[0])

    def f_protocol(self) -> str:
        return self.value().split("/")[1].upper()


class File(Obj):
    """A single file: the value is (name, Entry)."""

    TYPENAME = "File"

    def entry(self) -> tuple[str, Entry]:
        return self.value()

    def data(self) -> bytes:
        return self.engine.store.read(self.entry()[1].blob)

    def f_contents(self, offsetLines=None, limitLines=None) -> str:
        text = self.data().decode("utf-8", errors="replace")
        if offsetLines or limitLines:
            lines = text.splitlines(keepends=True)
            start = offsetLines or 0
            end = start + limitLines if limitLines else None
            text = "".join(lines[start:end])
        return text

    def f_size(self) -> int:
        return self.entry()[1].size

    def f_name(self) -> str:
        return self.entry()[0]

    def f_digest(self, excludeMetadata: bool = False) -> str:
        _, e = self.entry()
        if excludeMetadata:
            return "sha256:" + e.blob
        return "sha256:" + hashlib.sha256(f"{e.blob}:{e.mode:o}".encode()).hexdigest()

    def f_export(self, path: str, allowParentDirPath: bool = False) -> str:
        dest = self.engine.host_path(path)
        name, e = self.entry()
        if dest.is_dir():
            if not allowParentDirPath:
                raise EngineError(f"cannot export file to {path}: it is a directory")
            dest = dest / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
        shutil.copyfile(self.engine.store.path(e.blob), tmp)
        os.chmod(tmp, e.mode)
        os.replace(tmp, dest)
        return str(dest)

    def f_withName(self, name: str) -> File:
        return self.child(File, "withName", {"name": name}, lambda: (name, self.entry()[1]))

    def f_withTimestamps(self, timestamp: int) -> File:
        """Set the file's mtime (core/file.go ~1152-1195, ``os.Chtimes``)."""

        def thunk():
            name, e = self.entry()
            return name, replace(e, mtime=int(timestamp))

        return self.child(File, "withTimestamps", {"t": timestamp}, thunk)


class Directory(Obj):
    TYPENAME = "Directory"

    def tree(self) -> Tree:
        return self.value()

    def _derive(self, fieldname: str, args: dict[str, Any], fn: Callable[[Tree], Tree]):
        return self.child(Directory, fieldname, args, lambda: fn(self.tree()))

    def f_entries(self, path: str = "") -> list[str]:
        """Names in ``path``, directories with a trailing ``/`` (clients of v0.17.0
        and later), in ``os.ReadDir`` order (core/directory.go ``Entries``)."""
        sub = fs.subtree(self.tree(), path) if path else self.tree()
        key = fs.norm(path)
        if key and key not in self.tree():
            raise EngineError(f"{path}: no such file or directory")
        names: dict[str, bool] = {}
        for k, e in sub.items():
            top, _, rest = k.partition("/")
            names[top] = names.get(top, False) or bool(rest) or e.kind == "dir"
        return [n + "/" if is_dir else n for n, is_dir in sorted(names.items())]

    def f_glob(self, pattern: str) -> list[str]:
        """Paths matching one moby/patternmatcher pattern, in ``filepath.WalkDir``
        order, directories with a trailing ``/`` (core/directory.go ``Glob``)."""
        matcher = patterns.PatternMatcher([pattern])
        if not matcher.patterns:
            return []
        pat = matcher.patterns[0]
        tree = self.tree()
        dirs = {k.rsplit("/", 1)[0] for k in tree if "/" in k}
        out = []
        for k in sorted(tree, key=lambda k: k.split("/")):
            if k and pat.match(k):
                out.append(k + "/" if tree[k].kind == "dir" or k in dirs else k)
        return out

    def f_digest(self) -> str:
        return fs.tree_digest(self.tree())

    def f_exists(self, path: str, expectedType=None, doNotFollowSymlinks=False) -> bool:
        """core/directory.go Exists: stat the path, following symlinks unless told
        not to or asked for SYMLINK_TYPE; with expectedType, the type must match."""
        follow = not (doNotFollowSymlinks or expectedType == "SYMLINK_TYPE")
        entry = fs.lookup(self.tree(), path, follow=follow)
        if entry is None:
            return False
        kinds = {"DIRECTORY_TYPE": "dir", "REGULAR_TYPE": "file", "SYMLINK_TYPE": "symlink"}
        if expectedType is None:
            return True
        if expectedType not in kinds:
            raise EngineError(f"invalid path type {expectedType}")
        return entry.kind == kinds[expectedType]

    def f_file(self, path: str, expand: bool = False) -> File:
        """core/directory.go Subfile: the path is read inside the snapshot, so a
        symlink on the way, or at the end, leads to its target
        (core/integration/directory_test.go TestSymlink); the file keeps its name."""
        name = fs.norm(path).rsplit("/", 1)[-1]

        def thunk():
            key = fs.resolve(self.tree(), path)
            e = self.tree().get(key) if key else None
            if e is None or e.kind != "file":
                raise EngineError(f"{path}: no such file")
            return name, e

        return self.child(File, "file", {"path": path}, thunk)

    def f_directory(self, path: str, expand: bool = False) -> Directory:
        """core/directory.go DirectorySubdirectoryLazy: a stat that follows
        symlinks checks a directory is there, then its contents are the target's."""

        def thunk():
            key = fs.resolve(self.tree(), path)
            if key is None or (key and self.tree()[key].kind != "dir"):
                raise EngineError(f"{path}: no such directory")
            return fs.subtree(self.tree(), key)

        return self.child(Directory, "directory", {"path": path}, thunk)

    def f_withNewFile(self, path: str, contents: str, permissions: int = 0o644, **_) -> Directory:
        entry = fs.file_entry(self.engine.store, contents.encode(), permissions)
        return self._derive(
            "withNewFile",
            {"path": path, "blob": entry.blob, "perm": permissions},
            lambda t: fs.put(t, path, entry),
        )

    def f_withFile(self, path: str, source: str, permissions: int | None = None, **_):
        src = self.engine.load(source, File)

        def fn(t: Tree) -> Tree:
            _, e = src.entry()
            return fs.put(t, path, replace(e, mode=permissions) if permissions else e)

        return self._derive("withFile", {"path": path, "source": source, "p": permissions}, fn)

    def f_withDirectory(self, path: str, source: str, exclude=(), include=(), **kw):
        _unsupported(kw, gitignore=False, owner="", expand=False, permissions=None)
        src = self.engine.load(source, Directory)
        args = {"path": path, "source": source, "exclude": exclude, "include": include}
        return self._derive(
            "withDirectory",
            args,
            lambda t: fs.graft(t, path, filter_tree(src.tree(), include, exclude)),
        )

    def f_withNewDirectory(self, path: str, permissions: int = 0o755) -> Directory:
        return self._derive(
            "withNewDirectory",
            {"path": path},
            lambda t: fs.put(t, path, Entry("dir", permissions)),
        )

    def f_withoutFile(self, path: str) -> Directory:
        return self._derive("withoutFile", {"path": path}, lambda t: fs.remove(t, path))

    def f_withoutDirectory(self, path: str) -> Directory:
        return self._derive("withoutDirectory", {"path": path}, lambda t: fs.remove(t, path))

    def f_withTimestamps(self, timestamp: int) -> Directory:
        """Set every file's and directory's mtime (core/directory.go ~2601-2645)."""
        return self._derive(
            "withTimestamps", {"t": timestamp}, lambda t: fs.with_timestamps(t, timestamp)
        )

    def f_filter(self, exclude=(), include=(), gitignore: bool = False) -> Directory:
        return self._derive(
            "filter",
            {"exclude": exclude, "include": include},
            lambda t: filter_tree(t, include, exclude),
        )

    def f_export(self, path: str, wipe: bool = False) -> str:
        dest = self.engine.host_path(path)
        if wipe and dest.exists():
            shutil.rmtree(dest)
        fs.materialize(self.engine.store, self.tree(), dest)
        return str(dest)


class GitRef(Obj):
    """A resolved ref: the value is (GitRepoState, gitsource.Ref)."""

    TYPENAME = "GitRef"

    def f_commit(self) -> str:
        return self.value()[1].sha

    def f_ref(self) -> str:
        ref = self.value()[1]
        return ref.name or ref.sha

    def f_tree(self, discardGitDir: bool = False, depth: int = 1, **kw) -> Directory:
        """core/schema/git.go tree: ``.git`` is kept unless discarded here or by
        ``git(keepGitDir: false)`` (core/git.go ~407)."""
        _unsupported(kw, includeTags=False)
        repo, ref = self.value()
        discard = repo.discard_git_dir or bool(discardGitDir)

        def thunk() -> Tree:
            try:
                return self.engine.git.tree(repo.url, ref, repo.auth, discard, depth)
            except GitError as exc:
                raise EngineError(str(exc)) from None

        return self.child(Directory, "tree", {"discard": discard, "depth": depth}, thunk)


@dataclass(frozen=True)
class GitRepoState:
    url: GitURL
    remote: Remote
    auth: GitAuth | None
    discard_git_dir: bool


class GitRepository(Obj):
    """A remote repository, listed once per session (``git`` is a per-client call)."""

    TYPENAME = "GitRepository"

    def _ref(self, fieldname: str, args: dict[str, Any], target: str) -> GitRef:
        repo: GitRepoState = self.value()
        try:
            ref = repo.remote.lookup(target)  # eager, as the engine's ref resolver
        except GitError as exc:
            raise EngineError(str(exc)) from None
        return self.child(GitRef, fieldname, args, lambda: (repo, ref))

    def f_branch(self, name: str) -> GitRef:
        return self._ref("branch", {"name": name}, "refs/heads/" + name.removeprefix("refs/heads/"))

    def f_tag(self, name: str) -> GitRef:
        return self._ref("tag", {"name": name}, "refs/tags/" + name.removeprefix("refs/tags/"))

    def f_commit(self, id: str) -> GitRef:
        if not is_commit_sha(id):
            raise EngineError(f"invalid commit SHA: {json.dumps(id)}")
        return self._ref("commit", {"id": id}, id)

    def f_ref(self, name: str) -> GitRef:
        return self._ref("ref", {"name": name}, name)

    def f_head(self) -> GitRef:
        return self._ref("head", {}, "HEAD")

    def f_url(self) -> str:
        return self.value().url.remote()


class Host(Obj):
    """The caller's filesystem, as seen from its session's working directory."""

    TYPENAME = "Host"

    def f_directory(self, path: str, exclude=(), include=(), noCache=False, gitignore=False):
        """core/schema/host.go directory: patterns per ``patterns.host_patterns``,
        matched by ``patterns.PathFilter``; read now and kept for the session
        unless ``noCache`` (core/integration/host_test.go TestDirectoryCacheBehavior)."""
        session = self.engine.session()
        root = self.engine.host_path(patterns.go_clean(path))
        base, rel = root, "."
        if gitignore:
            found = _find_up(root, ".git")
            if found is not None:
                base, rel = found, os.path.relpath(root, found)
        inc = (["!*", rel] if rel != "." else []) + patterns.host_patterns(include, rel)
        exc = patterns.host_patterns(exclude, rel)

        def thunk() -> Tree:
            return self.engine.read_host_dir(base, rel, inc, exc, gitignore)

        args = {
            "path": str(root),
            "exclude": list(exclude or ()),
            "include": list(include or ()),
            "gitignore": bool(gitignore),
            "session": session.id,
        }
        d = self.child(Directory, "directory", args, thunk, fresh=bool(noCache))
        d.value()  # the engine syncs when the field resolves, not when it is used
        return d

    def f_file(self, path: str, noCache: bool = False) -> File:
        """core/schema/host.go file: ``directory(dir, include: [name]).file(name)``."""
        file_dir, _, name = path.rpartition("/")
        file_dir = file_dir + "/" if path.count("/") else ""
        return self.f_directory(file_dir, include=[name], noCache=noCache).f_file(name)


def _find_up(start: Path, name: str) -> Path | None:
    """core/host.go FindUp: the nearest directory at or above ``start`` holding ``name``."""
    cur = start
    while True:
        if os.path.lexists(cur / name):
            return cur
        if cur.parent == cur:
            return None
        cur = cur.parent


class Container(Obj):
    TYPENAME = "Container"

    def state(self) -> ContainerState:
        return self.value()

    def _derive(self, fieldname: str, args: dict[str, Any], fn: Callable[[ContainerState], Any]):
        return self.child(Container, fieldname, args, lambda: fn(self.state()))

    # -- configuration
    def f_from(self, address: str, registryService=None) -> Container:
        """core/schema/container.go ``from``. An image in a registry on loopback is
        resolved when the field resolves, with the session's credentials, and
        brings its own config (``pull.py``); the public base images, which cannot
        be pulled here, bring the config ``base_image_state`` models."""
        from .pull import PullError, on_loopback, resolve_config

        validate_reference(address, "address")
        args: dict[str, Any] = {"address": address}
        pulled: dict[str, Any] | None = None
        if on_loopback(address):
            from .images import parse_normalized_named
            from .registry import parse_target

            session = self.engine.session()
            platform = self.state().platform
            named = parse_normalized_named(address)
            ref = str(named) if named.tag or named.digest else f"{named.name}:latest"
            if not named.digest:  # fromSessionScopeInput: a tag once per session
                args["session"] = session.id
            creds = session.registry_auth.lookup(parse_target(address).registry)
            try:
                pulled = resolve_config(address, platform, creds)
            except PullError as exc:
                raise EngineError(
                    f'failed to resolve image "{ref}" (platform: "{platform}"): {exc}'
                ) from None

        def fn(s: ContainerState) -> ContainerState:
            # The parent's annotations stay: FromCanonicalRef replaces the rootfs
            # and config, not Container.Annotations.
            state = base_image_state(address, s.platform, self.engine.go_version())
            state = replace(state, annotations=s.annotations)
            return state if pulled is None else with_image_config(state, pulled)

        return self._derive("from", args, fn)

    def f_withEnvVariable(self, name: str, value: str, expand: bool = False) -> Container:
        def fn(s: ContainerState) -> ContainerState:
            v = expand_vars(value, s.env_dict()) if expand else value
            return s.with_env(name, v)

        return self._derive("withEnvVariable", {"name": name, "value": value, "e": expand}, fn)

    def f_withoutEnvVariable(self, name: str) -> Container:
        return self._derive(
            "withoutEnvVariable",
            {"name": name},
            lambda s: replace(s, env=tuple((k, v) for k, v in s.env if k != name)),
        )

    def f_withWorkdir(self, path: str, expand: bool = False) -> Container:
        return self._derive(
            "withWorkdir", {"path": path}, lambda s: replace(s, workdir="/" + fs.norm(path))
        )

    def f_withUser(self, name: str) -> Container:
        return self._derive("withUser", {"name": name}, lambda s: replace(s, user=name))

    def f_withLabel(self, name: str, value: str) -> Container:
        def fn(s: ContainerState) -> ContainerState:
            labels = [(k, v) for k, v in s.labels if k != name] + [(name, value)]
            return replace(s, labels=tuple(labels))

        return self._derive("withLabel", {"name": name, "value": value}, fn)

    def f_withAnnotation(self, name: str, value: str) -> Container:
        """core/container.go ``WithAnnotation``: appended, a repeated key too."""
        return self._derive(
            "withAnnotation",
            {"name": name, "value": value},
            lambda s: replace(s, annotations=(*s.annotations, (name, value))),
        )

    def f_withoutAnnotation(self, name: str) -> Container:
        """core/container.go ``WithoutAnnotation``: the first entry of that key
        only (the loop breaks after one ``slices.Delete``)."""

        def fn(s: ContainerState) -> ContainerState:
            keys = [k for k, _ in s.annotations]
            if name not in keys:
                return s
            i = keys.index(name)
            return replace(s, annotations=s.annotations[:i] + s.annotations[i + 1 :])

        return self._derive("withoutAnnotation", {"name": name}, fn)

    def f_withEntrypoint(self, args: list[str], keepDefaultArgs: bool = False) -> Container:
        def fn(s: ContainerState) -> ContainerState:
            return replace(
                s,
                entrypoint=tuple(args),
                default_args=s.default_args if keepDefaultArgs else (),
            )

        return self._derive("withEntrypoint", {"args": args, "k": keepDefaultArgs}, fn)

    def f_withDefaultArgs(self, args: list[str]) -> Container:
        return self._derive(
            "withDefaultArgs", {"args": args}, lambda s: replace(s, default_args=tuple(args))
        )

    def f_withExposedPort(self, port: int, protocol: str = "TCP", **_) -> Container:
        spec = f"{port}/{protocol.lower()}"
        return self._derive(
            "withExposedPort",
            {"p": spec},
            lambda s: replace(s, exposed_ports=tuple(dict.fromkeys((*s.exposed_ports, spec)))),
        )

    def f_withRegistryAuth(self, address: str, username: str, secret: str) -> Container:
        """core/schema/container.go ~3998-4028: the credential goes to the
        SESSION's auth provider, keyed by registry host (auth/registry.go), when
        the field resolves; the container itself is unchanged. Any publish in the
        same session to that host uses it, whichever container it starts from."""
        plaintext = self.engine.load(secret, Secret).plaintext
        session = self.engine.session()
        try:
            session.registry_auth.add(address, username, plaintext)
        except AuthAddressError as exc:
            raise EngineError(str(exc)) from None
        args = {"a": address, "u": username, "s": secret, "session": session.id}
        return self._derive("withRegistryAuth", args, lambda s: s)

    def f_withoutRegistryAuth(self, address: str) -> Container:
        """Removes the session's credential for that registry host."""
        session = self.engine.session()
        try:
            session.registry_auth.remove(address)
        except AuthAddressError as exc:
            raise EngineError(str(exc)) from None
        args = {"a": address, "session": session.id}
        return self._derive("withoutRegistryAuth", args, lambda s: s)

    # -- filesystem
    def f_withDirectory(self, path: str, source: str, exclude=(), include=(), **kw) -> Container:
        _unsupported(kw, gitignore=False, owner="", expand=False, permissions=None)
        src = self.engine.load(source, Directory)
        args = {"path": path, "source": source, "exclude": exclude, "include": include}

        def fn(s: ContainerState) -> ContainerState:
            target = self._abs(s, path)
            return replace(
                s, rootfs=fs.graft(s.rootfs, target, filter_tree(src.tree(), include, exclude))
            )

        return self._derive("withDirectory", args, fn)

    def f_withFile(self, path: str, source: str, permissions=None, owner="", expand=False):
        src = self.engine.load(source, File)

        def fn(s: ContainerState) -> ContainerState:
            _, e = src.entry()
            e = replace(e, mode=permissions) if permissions is not None else e
            return replace(s, rootfs=fs.put(s.rootfs, self._abs(s, path), e))

        return self._derive("withFile", {"path": path, "source": source, "p": permissions}, fn)

    def f_withNewFile(self, path: str, contents: str = "", permissions: int = 0o644, **kw):
        _unsupported(kw, owner="", expand=False)
        entry = fs.file_entry(self.engine.store, contents.encode(), permissions)
        return self._derive(
            "withNewFile",
            {"path": path, "blob": entry.blob, "perm": permissions},
            lambda s: replace(s, rootfs=fs.put(s.rootfs, self._abs(s, path), entry)),
        )

    def f_withMountedCache(self, path: str, cache: str, source=None, sharing="SHARED", **kw):
        _unsupported(kw, owner="", expand=False)
        vol = self.engine.load(cache, CacheVolume)
        mount = Mount(fs.norm(path), "cache", cache_key=vol.key)
        return self._derive(
            "withMountedCache",
            {"path": path, "cache": cache},
            lambda s: replace(s, mounts=(*[m for m in s.mounts if m.path != mount.path], mount)),
        )

    def f_withMountedDirectory(self, path: str, source: str, **kw) -> Container:
        _unsupported(kw, owner="", expand=False)
        src = self.engine.load(source, Directory)
        mount = Mount(fs.norm(path), "dir", directory=src)
        return self._derive(
            "withMountedDirectory",
            {"path": path, "source": source},
            lambda s: replace(s, mounts=(*[m for m in s.mounts if m.path != mount.path], mount)),
        )

    def f_withMountedSecret(
        self, path: str, source: str, owner: str = "", mode: int = 0o400, expand: bool = False
    ) -> Container:
        """core/schema/container.go withMountedSecret -> core/container.go
        WithMountedSecret: the secret joins ``container.Secrets`` with its path
        (relative to the workdir) and mode (default 0400); it is not a rootfs
        change. ``owner`` needs user lookup, which this engine does not model."""
        _unsupported({"owner": owner, "expand": expand}, owner="", expand=False)
        secret = self.engine.load(source, Secret)

        def fn(s: ContainerState) -> ContainerState:
            key = fs.norm(self._abs(s, path))
            mount = SecretMount(secret, path=key, mode=mode)
            kept = tuple(m for m in s.secrets if m.path != key)
            return replace(s, secrets=(*kept, mount))

        return self._derive("withMountedSecret", {"path": path, "source": source, "m": mode}, fn)

    def f_withSecretVariable(self, name: str, secret: str) -> Container:
        """core/container.go WithSecretVariable: an exec-time variable, replacing
        a secret variable of the same name; never in the image config."""
        src = self.engine.load(secret, Secret)

        def fn(s: ContainerState) -> ContainerState:
            kept = tuple(m for m in s.secrets if m.env != name)
            return replace(s, secrets=(*kept, SecretMount(src, env=name)))

        return self._derive("withSecretVariable", {"name": name, "secret": secret}, fn)

    def f_withoutSecretVariable(self, name: str) -> Container:
        return self._derive(
            "withoutSecretVariable",
            {"name": name},
            lambda s: replace(s, secrets=tuple(m for m in s.secrets if m.env != name)),
        )

    def f_withoutMount(self, path: str, expand: bool = False) -> Container:
        """Removes a mount at ``path``, and a secret mounted there (core/container.go
        WithoutMount removes from both ``Mounts`` and ``Secrets``)."""

        def fn(s: ContainerState) -> ContainerState:
            key = fs.norm(self._abs(s, path))
            return replace(
                s,
                mounts=tuple(m for m in s.mounts if m.path != key),
                secrets=tuple(m for m in s.secrets if not m.path or m.path != key),
            )

        return self._derive("withoutMount", {"path": path}, fn)

    def f_rootfs(self) -> Directory:
        return self.child(Directory, "rootfs", {}, lambda: self.state().rootfs)

    def f_file(self, path: str, expand: bool = False) -> File:
        def thunk():
            s = self.state()
            key = fs.norm(self._abs(s, path))
            e = s.rootfs.get(key)
            if e is None or e.kind != "file":
                raise EngineError(f"{path}: no such file in container")
            return key.rsplit("/", 1)[-1], e

        return self.child(File, "file", {"path": path}, thunk)

    def f_directory(self, path: str, expand: bool = False) -> Directory:
        def thunk():
            s = self.state()
            key = fs.norm(self._abs(s, path))
            if key and (key not in s.rootfs or s.rootfs[key].kind != "dir"):
                raise EngineError(f"{path}: no such directory in container")
            return fs.subtree(s.rootfs, key)

        return self.child(Directory, "directory", {"path": path}, thunk)

    @staticmethod
    def _abs(s: ContainerState, path: str) -> str:
        return path if path.startswith("/") else f"{s.workdir.rstrip('/')}/{path}"

    # -- exec
    def f_withExec(self, args: list[str], **kw) -> Container:
        _unsupported(
            {k: v for k, v in kw.items() if k != "expect"},
            useEntrypoint=False,
            stdin="",
            redirectStdin="",
            redirectStdout="",
            redirectStderr="",
            experimentalPrivilegedNesting=False,
            insecureRootCapabilities=False,
            expand=False,
            noInit=False,
        )
        expect = kw.get("expect", "SUCCESS")
        return self._derive(
            "withExec",
            {"args": args, "expect": expect},
            lambda s: self.engine.executor.run(s, list(args), expect),
        )

    def _last_exec(self) -> tuple[str, str, int]:
        s = self.state()
        if s.last_exec is None:
            raise EngineError("no command has been set")
        return s.last_exec

    def f_stdout(self) -> str:
        return self._last_exec()[0]

    def f_stderr(self) -> str:
        return self._last_exec()[1]

    def f_combinedOutput(self) -> str:
        out, err, _ = self._last_exec()
        return out + err

    def f_exitCode(self) -> int:
        return self._last_exec()[2]

    # -- introspection
    def f_platform(self) -> str:
        return self.state().platform

    def f_user(self) -> str:
        return self.state().user

    def f_workdir(self) -> str:
        return self.state().workdir

    def f_entrypoint(self) -> list[str]:
        return list(self.state().entrypoint)

    def f_defaultArgs(self) -> list[str]:
        return list(self.state().default_args)

    def f_imageRef(self) -> str:
        return self.state().base_ref

    def f_envVariable(self, name: str) -> str | None:
        return self.state().env_dict().get(name)

    def f_envVariables(self) -> list[EnvVariable]:
        return [
            self.child(EnvVariable, "envVariables", {"n": k}, lambda kv=(k, v): kv)
            for k, v in self.state().env
        ]

    def f_label(self, name: str) -> str | None:
        return dict(self.state().labels).get(name)

    def f_labels(self) -> list[Label]:
        return [
            self.child(Label, "labels", {"n": k}, lambda kv=(k, v): kv)
            for k, v in self.state().labels
        ]

    def f_exposedPorts(self) -> list[Port]:
        return [
            self.child(Port, "exposedPorts", {"p": p}, lambda p=p: p)
            for p in self.state().exposed_ports
        ]

    def f_mounts(self) -> list[str]:
        return ["/" + m.path for m in self.state().mounts]

    # -- images
    def _variants(self, platformVariants) -> list[ContainerState]:
        """The containers an export/asTarball/publish packs (core/container.go
        ~6420-6495): this one and the variants, minus those with no rootfs yet
        (``filterEmptyContainers``: ``dag.container()`` alone is a placeholder),
        one per platform. The engine checks duplicates while its goroutines fill
        the map, so it may instead keep the last; here it is always the error."""
        states = [self.state()]
        states += [self.engine.load(v, Container).state() for v in platformVariants or ()]
        states = [s for s in states if s.rootfs or s.base_ref]
        seen = set()
        for s in states:
            if s.platform in seen:
                raise EngineError(f'duplicate platform "{s.platform}"')
            seen.add(s.platform)
        if not states:
            raise EngineError("no containers to export")
        return states

    def f_export(self, path: str, platformVariants=(), **kw) -> str:
        _unsupported(kw, forcedCompression=None, mediaTypes="OCIMediaTypes", expand=False)
        dest = self.engine.host_path(path)
        self.engine.images.write_tarball(self._variants(platformVariants), dest)
        return str(dest)

    def f_asTarball(self, platformVariants=(), **kw) -> File:
        """A file ``container.tar``, 0600, made now (core/schema/container.go
        asTarball, core/container_image.go AsTarball)."""
        _unsupported(kw, forcedCompression=None, mediaTypes="OCIMediaTypes")

        def thunk():
            with tempfile.TemporaryDirectory(dir=self.engine.state_dir) as tmp:
                out = Path(tmp, "container.tar")
                self.engine.images.write_tarball(self._variants(platformVariants), out)
                digest, size = self.engine.store.put_file(out)
            return "container.tar", Entry("file", 0o600, digest, size, mtime=fs.now())

        return self.child(File, "asTarball", {"v": platformVariants}, thunk)

    def f_import(self, source: str, tag: str = "") -> Container:
        src = self.engine.load(source, File)

        def fn(s: ContainerState) -> ContainerState:
            return self.engine.images.import_tarball(src, s, tag)

        return self._derive("import", {"source": source, "tag": tag}, fn)

    def f_publish(self, address: str, platformVariants=(), **kw) -> str:
        _unsupported(kw, forcedCompression=None, mediaTypes="OCIMediaTypes", registryService=None)
        states = self._variants(platformVariants)
        return self.engine.images.publish(states, address)


class Query(Obj):
    TYPENAME = "Query"

    def f_version(self) -> str:
        return self.engine.version

    def f_defaultPlatform(self) -> str:
        return host_linux_platform()

    def f_container(self, platform: str | None = None) -> Container:
        plat = platform or host_linux_platform()
        split_platform(plat)
        return self.child(
            Container, "container", {"platform": plat}, lambda: ContainerState(platform=plat)
        )

    def f_directory(self) -> Directory:
        return self.child(Directory, "directory", {}, lambda: fs.EMPTY)

    def f_host(self) -> Host:
        return self.child(Host, "host", {}, lambda: None)

    def f_cacheVolume(self, key: str, **kw) -> CacheVolume:
        _unsupported(kw, source=None, sharing="SHARED", owner="")
        return self.child(CacheVolume, "cacheVolume", {"key": key}, lambda: key)

    def f_setSecret(self, name: str, plaintext: str) -> Secret:
        """core/schema/secret.go setSecret: a new result per call (PerCallInput)
        whose handle comes from the name; the plaintext is bound to the handle in
        the caller's session (see :class:`Secret`)."""
        handle = hashlib.sha256(f"setSecret\0{name}".encode()).hexdigest()
        session = self.engine.session()
        with session.lock:
            session.secret_values[handle] = plaintext
        return self.child(Secret, "setSecret", {"name": name}, lambda: (name, handle), fresh=True)

    def f_git(
        self,
        url: str,
        keepGitDir: bool | None = None,
        httpAuthUsername: str = "",
        httpAuthToken: str | None = None,
        httpAuthHeader: str | None = None,
        sshKnownHosts: str = "",
        **kw,
    ) -> GitRepository:
        """core/schema/git.go git: parse the URL (util/gitutil/url.go), then list
        the remote's refs with the host's git, once per session."""
        _unsupported(kw, sshAuthSocket=None, experimentalServiceHost=None)
        auth_args = (httpAuthUsername, httpAuthToken, httpAuthHeader)
        try:
            remote = parse_git_url(url)
        except GitError as exc:
            if exc.kind != "unknown-protocol":
                raise EngineError(f"failed to parse Git URL: {exc}") from None
            return self._git_guess_scheme(url, keepGitDir, auth_args)
        try:
            return self._git(remote, keepGitDir, auth_args)
        except GitError as exc:
            raise EngineError(str(exc)) from None

    def _git_guess_scheme(self, url: str, keep_git_dir, auth_args) -> GitRepository:
        """A URL without a scheme is tried as https://, then ssh://, moving on
        only when authentication fails (gitutil.ParseCloneURL)."""
        candidates = []
        for proto in ("https", "ssh"):
            try:
                candidates.append(parse_git_url(f"{proto}://{url}"))
            except GitError:
                continue
        if not candidates:
            raise EngineError(f"failed to parse Git URL: unknown protocol: {json.dumps(url)}")
        for candidate in candidates:
            try:
                return self._git(candidate, keep_git_dir, auth_args)
            except GitError as exc:
                if exc.kind == "auth":
                    continue
                raise EngineError(str(exc)) from None
        raise EngineError("failed to determine Git URL protocol")

    def _git(self, remote: GitURL, keep_git_dir, auth_args) -> GitRepository:
        username, token_id, header_id = auth_args
        session = self.engine.session()
        if remote.scheme == "ssh":
            raise GitError(
                "git authentication failed: SSH URLs are not supported without an SSH socket",
                "auth",
            )
        auth = None
        scope = []  # core/git_remote.go remoteCacheScope: the secrets' handles, not IDs
        if token_id:
            token = self.engine.load(token_id, Secret)
            auth = GitAuth.for_url(remote, basic_auth_header(remote, token.plaintext, username))
            scope.append("token:" + token.handle)
        elif header_id:
            header = self.engine.load(header_id, Secret)
            auth = GitAuth.for_url(remote, header.plaintext)
            scope.append("header:" + header.handle)
        key = json.dumps(["ls-remote", remote.remote(), username, *scope])
        listed = session.cached(key, lambda: self.engine.git.ls_remote(remote, auth))
        state = GitRepoState(remote, listed, auth, keep_git_dir is False)
        args = {
            "url": remote.remote(),
            "discard": state.discard_git_dir,
            "auth": [username, token_id, header_id],
            "session": session.id,
        }
        return self.child(GitRepository, "git", args, lambda: state)

    def f_node(self, id: str) -> Obj:
        return self.engine.load(id, Obj)

    def __getattr__(self, name: str):
        m = re.fullmatch(r"f_load(\w+)FromID", name)
        if m:
            typename = m.group(1)
            return lambda id: self.engine.load(id, Obj, typename=typename)
        raise AttributeError(name)


# --------------------------------------------------------------------------- helpers


def _unsupported(given: dict[str, Any], **defaults: Any) -> None:
    """Arguments the test engine ignores must be at their defaults: anything else
    would be silently wrong, so it fails instead."""
    for name, value in given.items():
        if name not in defaults:
            raise EngineError(f"argument {name!r} is not implemented by the dagger test engine")
        default = defaults[name]
        if value not in (default, None, [], ()) and value != default:
            raise EngineError(
                f"argument {name}={value!r} is not implemented by the dagger test engine"
            )


def filter_tree(tree: Tree, include, exclude) -> Tree:
    """``withDirectory``/``filter`` include and exclude (util/layercopy/filter.go):
    moby/patternmatcher with per-directory results, see ``patterns.select``. A
    directory stays when it matches or when anything below it is kept."""
    if not include and not exclude:
        return tree
    try:
        kept = patterns.select(((k, e.kind == "dir") for k, e in tree.items()), include, exclude)
    except patterns.PatternError as exc:
        raise EngineError(str(exc)) from None
    return fs.freeze({k: e for k, e in tree.items() if k in kept})


def expand_vars(text: str, env: dict[str, str]) -> str:
    return re.sub(r"\$(?:\{(\w+)\}|(\w+))", lambda m: env.get(m.group(1) or m.group(2), ""), text)


_REF = re.compile(
    r"^(?:(?P<domain>(?:[a-zA-Z0-9-]+\.)*[a-zA-Z0-9-]+(?::[0-9]+)?)/)?"
    r"(?P<path>[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*)"
    r"(?::(?P<tag>[\w][\w.-]{0,127}))?(?:@(?P<digest>sha256:[a-f0-9]{64}))?$"
)


def validate_reference(address: str, argname: str) -> re.Match[str]:
    m = _REF.match(address)
    if not m:
        raise EngineError(f"{argname}: invalid reference format: {address!r}")
    return m


def base_image_state(address: str, platform: str, go_version: str) -> ContainerState:
    """The image config a real base image would bring. The test engine has no base
    image contents (nothing can be pulled here), so only the config is modelled:
    the golang images' Go environment and alpine's default shell command."""
    name = address.split("@")[0].rsplit("/", 1)[-1].split(":")[0]
    env: list[tuple[str, str]] = [("PATH", DEFAULT_PATH)]
    workdir = "/"
    cmd: tuple[str, ...] = ()
    if name == "golang":
        env = [
            ("PATH", "/go/bin:/usr/local/go/bin:" + DEFAULT_PATH),
            ("GOLANG_VERSION", go_version.removeprefix("go")),
            ("GOTOOLCHAIN", "local"),
            ("GOPATH", "/go"),
        ]
        workdir = "/go"
        cmd = ("bash",)
    elif name in ("alpine", "busybox"):
        cmd = ("/bin/sh",)
    return ContainerState(
        platform=platform, base_ref=address, env=tuple(env), workdir=workdir, default_args=cmd
    )


def with_image_config(state: ContainerState, cfg: dict[str, Any]) -> ContainerState:
    """core.MergeImageConfig: a pulled image's own config in place of the modelled one."""
    env = tuple(tuple(e.split("=", 1)) for e in cfg.get("Env") or [] if "=" in e)
    return replace(
        state,
        env=env or state.env,  # type: ignore[arg-type]
        workdir=cfg.get("WorkingDir") or state.workdir,
        user=cfg.get("User") or "",
        entrypoint=tuple(cfg.get("Entrypoint") or ()),
        default_args=tuple(cfg.get("Cmd") or ()),
        labels=tuple((cfg.get("Labels") or {}).items()),
        exposed_ports=tuple(sorted(cfg.get("ExposedPorts") or {})),
    )


# --------------------------------------------------------------------------- engine


class Engine:
    """Object registry plus the services the objects need (blobs, exec, images)."""

    version = "v0.21.8-test-engine"

    def __init__(self, state_dir: Path, cwd: Path | None = None) -> None:
        from .execution import Executor
        from .images import Images

        self.state_dir = state_dir.resolve()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.cwd = cwd or Path.cwd()
        self.store = BlobStore(self.state_dir / "blobs")
        self.cache_dir = self.state_dir / "cache-volumes"
        # PEM certificates the engine trusts besides the system's, as a real engine
        # configured with custom CAs does (its own /usr/local/share/ca-certificates);
        # execs see them (execution.py), images never contain them.
        self.custom_ca_certs: list[str] = []
        self._objects: dict[str, Obj] = {}
        self._lock = threading.Lock()
        self._fresh = itertools.count()
        self.root = Query(self, "query", lambda: None)
        self.executor = Executor(self)
        self.images = Images(self)
        self._go_version: str | None = None
        self.git = GitSources(self.state_dir, self._import_checkout)
        self.default_session = Session(token="", workdir=self.cwd)

    def record_exec(self, args: list[str]) -> None:
        """Hook for the server's exec log and exec faults."""

    def make(self, cls, parent_id: str, fieldname: str, args: dict, thunk, *, fresh=False):
        call = json.dumps([parent_id, fieldname, args], sort_keys=True, default=str)
        if fresh:
            call += f"#{next(self._fresh)}"
        digest = hashlib.sha256(call.encode()).hexdigest()[:40]
        oid = base64.urlsafe_b64encode(f"{cls.TYPENAME}:{digest}".encode()).decode().rstrip("=")
        with self._lock:
            obj = self._objects.get(oid)
            if obj is None:
                obj = cls(self, oid, thunk)
                self._objects[oid] = obj
        return obj

    def load(self, oid: str, cls: type[Obj], typename: str | None = None) -> Any:
        with self._lock:
            obj = self._objects.get(str(oid))
        if obj is None:
            raise EngineError(f"unknown object id {str(oid)[:24]}...: not made by this engine")
        if (typename and typename != obj.TYPENAME) or not isinstance(obj, cls):
            raise EngineError(f"id is a {obj.TYPENAME}, not a {typename or cls.TYPENAME}")
        return obj

    def session(self) -> Session:
        """The session of the request being served (outside a request: one with
        the engine's ``cwd`` as its working directory)."""
        return current_session() or self.default_session

    def host_path(self, path: str) -> Path:
        """A caller's path on its host: ``~`` expanded, relative paths against
        the session's working directory (engine/client/filesync.go ~295-308)."""
        p = os.path.expanduser(path)
        return Path(os.path.normpath(os.path.join(self.session().workdir, p)))

    def go_version(self) -> str:
        if self._go_version is None:
            out = subprocess.run(
                [self.executor.go_binary(), "env", "GOVERSION"],
                capture_output=True,
                text=True,
                check=False,
            )
            self._go_version = out.stdout.strip() or "unknown"
        return self._go_version

    def _import_checkout(self, root: Path) -> Tree:
        return fs.import_host_dir(self.store, root, lambda rel, is_dir: True)

    def read_host_dir(self, base: Path, rel: str, include, exclude, gitignore: bool) -> Tree:
        """Sync a host directory the way filesync does: ``base`` walked with the
        include/exclude patterns (and ``.gitignore`` files when asked), the result
        re-rooted at ``rel``."""
        target = base / rel if rel != "." else base
        if not target.exists():
            raise EngineError(
                f"failed to get snapshot: resolve {target}: lstat {target}: "
                "no such file or directory"
            )
        if not target.is_dir():
            raise EngineError(f"failed to get snapshot: stat {target}: not a directory")
        try:
            flt = patterns.PathFilter(
                include, exclude, patterns.GitIgnore(base) if gitignore else None
            )
        except patterns.PatternError as exc:
            raise EngineError(f"failed to get snapshot: {exc}") from None
        entries: dict[str, Entry] = {}
        for key, kind, full in patterns.walk_host(base, flt):
            if kind == "file":
                entries[key] = fs.host_file_entry(self.store, full)
                continue
            st = full.lstat()
            if kind == "symlink":
                entries[key] = Entry(
                    "symlink", 0o777, target=os.readlink(full), mtime=int(st.st_mtime)
                )
            else:
                entries[key] = Entry("dir", stat.S_IMODE(st.st_mode), mtime=int(st.st_mtime))
        tree = fs.freeze(entries)
        if rel != ".":
            if rel not in tree or tree[rel].kind != "dir":
                raise EngineError(f"{rel}: no such file or directory")
            tree = fs.subtree(tree, rel)
        return tree


@dataclass
class FaultRule:
    """Make the ``nth`` call (1-based, counted from when the rule was added) of
    ``field`` (``Type.field``) fail, ``times`` times in a row."""

    field: str
    kind: str  # "exec" | "error" | "http500" | "drop"
    nth: int = 1
    times: int = 1
    message: str = "injected fault"
    seen: int = 0
    fired: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
