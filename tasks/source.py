"""Stage 1, load source: what will be sent to the engine, and a digest of it.

The digest is what makes a build do nothing when nothing changed: it keys the
compile cache. So it covers exactly the files the engine receives:
``tasks.context`` decides that list (git's view of a checkout, ``.dockerignore``
with Docker's rules) and the exclude patterns that make ``host().directory`` send
exactly it. For git sources the engine resolves the ref and digests the tree it
checked out.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import re
import stat
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from prefect import task
from pydantic import BaseModel

from tasks import progress
from tasks.context import BuildContext, build_context
from tasks.gomod import nearest_go_work, needed_modules, requirements, vendor_manifest
from tasks.params import BuildParams, ParamsError
from tasks.retries import retry_options
from tasks.secrets import Credentials, load_secret_block, parse_git_token, secret_name
from tasks.session import engine_ready, host_snapshot_excludes

if TYPE_CHECKING:
    import dagger

_FULL_SHA = re.compile(r"[0-9a-f]{40}")
SMALL_FILE = 1 << 20


class SourceInfo(BaseModel):
    """The loaded source, small and serialisable: Prefect persists it."""

    kind: str  # "local" | "git"
    location: str  # absolute path or git URL
    ref: str = ""
    commit: str = ""
    digest: str
    files: int = 0
    bytes_sent: int = 0
    bytes_excluded: int = 0
    excludes: list[str] = []
    created: str = ""  # RFC 3339, from the commit or the newest file: stable across runs
    # Every `vendor/modules.txt` among the files sent (local sources): the compile
    # stage then knows a vendored module without a round trip to the engine. None
    # where only the engine knows the tree (git).
    vendor_manifests: list[str] | None = None
    # Every `go.work` among the files sent, likewise (None for git): whether Go
    # builds the module in workspace mode in the engine.
    workspaces: list[str] | None = None
    # Which `runtime_files` sources are directories (source-relative paths): the
    # assemble stage copies a directory and a file with different calls, and only
    # this stage has looked at the tree (the host's, or the engine's for git).
    runtime_dirs: list[str] = []

    def epoch(self) -> int:
        """The source's time (``created``) in Unix seconds, 0 where unknown."""
        try:
            return int(datetime.fromisoformat(self.created).timestamp())
        except ValueError:
            return 0


def digest_tree(context: BuildContext) -> tuple[str, int, int, int, float]:
    """-> (sha256 digest, files, bytes kept, bytes excluded, newest mtime) of the
    files the engine will receive (``context.entries``, already walked and
    lstat'ed: one pass over the tree, then one read per file).

    Names, the executable bit and contents go into the digest; timestamps do not,
    so a fresh checkout of the same commit gives the same digest. Files are taken
    in path order, so the digest does not depend on the walk.
    """
    h = hashlib.sha256()
    kept = 0
    newest = 0.0
    for rel, st in sorted(context.entries, key=lambda entry: entry[0]):
        full = os.path.join(context.root, rel)
        kept += st.st_size
        newest = max(newest, st.st_mtime)
        if stat.S_ISLNK(st.st_mode):
            content = hashlib.sha256(os.readlink(full).encode()).hexdigest()
        elif st.st_size <= SMALL_FILE:  # one read: file_digest's buffer costs more here
            with open(full, "rb", buffering=0) as fh:
                content = hashlib.sha256(fh.read()).hexdigest()
        else:
            with open(full, "rb") as fh:
                content = hashlib.file_digest(fh, "sha256").hexdigest()
        h.update(f"{rel}\0{st.st_mode & 0o111:o}\0{content}\n".encode())
    return "sha256:" + h.hexdigest(), len(context.entries), kept, context.bytes_excluded, newest


def _git(root: Path, *args: str) -> str:
    try:
        proc = subprocess.run(
            ["git", "-C", str(root), *args], capture_output=True, text=True, check=False, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return proc.stdout.strip() if proc.returncode == 0 else ""


def git_repository(url: str, token: Credentials | None = None) -> dagger.GitRepository:
    """The engine fetches the repository itself; a token reaches it only as a secret."""
    from dagger import dag

    if token is None:
        return dag.git(url)
    secret = dag.set_secret(secret_name("git-token", token.origin), token.password)
    # An empty username is the SDK's default, which it leaves out of the query.
    return dag.git(url, http_auth_token=secret, http_auth_username=token.username)


def source_directory(info: SourceInfo, token: Credentials | None = None) -> dagger.Directory:
    """The Dagger chain for the source; nothing is evaluated here.

    A git tree is taken without ``.git`` (the engine keeps it by default): Go would
    otherwise stamp VCS data into the binary, and the tree digest would cover it.
    """
    if info.kind == "git":
        repo = git_repository(info.location, token)
        ref = repo.commit(info.commit) if info.commit else repo.head()
        return ref.tree(discard_git_dir=True)
    from dagger import dag

    return dag.host().directory(info.location, exclude=[*info.excludes, *host_snapshot_excludes()])


async def git_token(params: BuildParams) -> Credentials | None:
    if not params.git_secret_block:
        return None
    value = await load_secret_block(params.git_secret_block, "git_secret_block")
    return parse_git_token(value, params.git_secret_block)


def _check_go_inputs_sent(params: BuildParams, root: Path, context: BuildContext) -> None:
    """What the build reads by name must be among the files sent: the module's
    go.mod and (with requirements to verify) go.sum, a module it reads from a directory
    of the source (a replacement, a go.work's ``use``), the Go files of
    ``main_package`` and ``extra_packages``. A vendoring script's ``third_party/``
    that git ignores, or a ``.dockerignore`` line ``cmd``, would otherwise fail in
    the engine (``open /src/third_party/foo/go.mod: no such file or directory``),
    or a go.sum left out as if it were not tidy. Refused in one line naming the
    parameter, before any engine work."""
    sent = {rel for rel, _ in context.entries}
    why = ".dockerignore or .gitignore" if context.from_git else ".dockerignore"
    hint = "; use_gitignore=false sends what git ignores" if context.from_git else ""
    module = posixpath.normpath(params.module_dir)

    def at_module(name: str) -> str:
        return posixpath.normpath(posixpath.join(module, name))

    own = [at_module("go.mod")]
    # go.sum matters once there is something to verify and no vendor/ to build
    # from (the compile stage decides -mod=vendor from the files sent, too). A
    # go.work is often kept out of version control on purpose (Go's own advice),
    # and the module then builds alone, as CI builds it.
    workspace = nearest_go_work(module, sent.__contains__)
    vendored = vendor_manifest(module, workspace) in sent  # as the compile stage decides
    if requirements(root / module / "go.mod") and not vendored:
        own.append(at_module("go.sum"))
    for name in own:
        if name not in sent and (root / name).is_file():
            raise ParamsError(
                [f"module_dir: {why} leaves {name} out of what the engine gets{hint}"]
            )
    for named, gomod in needed_modules(root, params.module_dir, sent.__contains__, vendored):
        if gomod not in sent:
            raise ParamsError(
                [f"module_dir: {named}, but {why} leaves {gomod} out of what the engine gets{hint}"]
            )
    packages = [("main_package", params.main_package)]
    packages += [("extra_packages", p) for p in params.extra_packages]
    for field, package in packages:
        directory = posixpath.normpath(posixpath.join(module, package))
        if directory == ".." or directory.startswith("../") or not (root / directory).is_dir():
            continue  # an import path, or a directory the parameter check has judged
        files = [
            posixpath.normpath(posixpath.join(directory, f.name))
            for f in (root / directory).glob("*.go")
            if not f.name.endswith("_test.go")
        ]
        if files and not sent.intersection(files):
            raise ParamsError(
                [
                    f"{field}: {package!r}: {why} leaves its Go files out of what the engine "
                    f"gets{hint}"
                ]
            )


def _check_runtime_files_sent(params: BuildParams, context: BuildContext) -> list[str]:
    """Each runtime file must be among the files sent, or the image would lack it
    (or the engine fail on a missing path after the compile), and readable by the
    image's user: refused in one line naming the parameter, before any engine
    work. -> the entries that are directories."""
    dirs = []
    for spec, rel, _ in params.runtime_placements()[1]:
        under = [
            (f, st)
            for f, st in context.entries
            if rel == "." or f == rel or f.startswith(rel + "/")
        ]
        if under:
            is_dir = (context.root / rel).is_dir()
            if is_dir:
                dirs.append(rel)
            if not _runs_as_root(params.runtime_user):
                top = ("" if rel == "." else rel) if is_dir else None
                _check_readable(spec, params.runtime_user, context.root, top, under)
            continue
        why = ".dockerignore or .gitignore" if context.from_git else ".dockerignore"
        hint = " (use_gitignore=false sends what git ignores)" if context.from_git else ""
        raise ParamsError(
            [
                f"runtime_files: {spec!r}: nothing under {rel!r} is sent to the engine; "
                f"{why} leaves it out{hint}"
            ]
        )
    return dirs


def _runs_as_root(user: str) -> bool:
    return user.partition(":")[0] in ("0", "root")


def _check_readable(
    spec: str, user: str, root: Path, top: str | None, files: list[tuple[str, os.stat_result]]
) -> None:
    """The engine keeps a host file's mode and makes it root's (engine/client/
    filesync.go resets uid and gid), so the image's user reads a runtime file only
    if others may, and enters a copied directory only if others may: a config file
    made with mode 0600 would fail the service at its start, not the build.
    ``top`` is the copied directory ('' for the source's root), None for a file."""
    checked: set[str] = set()
    for path, st in files:
        folder = posixpath.dirname(path)
        # The directories below the copied one; that one's contents are copied
        # into the destination (core/directory.go WithDirectory, CopyDirContents).
        while top is not None and folder != top and folder not in checked:
            checked.add(folder)
            mode = os.stat(root / folder).st_mode
            if mode & 0o005 != 0o005:
                _unreadable(spec, user, folder, mode, "enter")
            folder = posixpath.dirname(folder)
        if stat.S_ISREG(st.st_mode) and not st.st_mode & 0o004:
            _unreadable(spec, user, path, st.st_mode, "read")


def _unreadable(spec: str, user: str, path: str, mode: int, what: str) -> None:
    raise ParamsError(
        [
            f"runtime_files: {spec!r}: the image's user {user} cannot {what} {path!r} (mode "
            f"{stat.S_IMODE(mode):04o}; the image keeps the mode and makes it root's): "
            f"chmod o+r{'x' if what == 'enter' else ''} it, or set runtime_user"
        ]
    )


def outside_links_advice(root: Path, module_dir: str, links: list[tuple[str, str]]) -> str:
    """Which symlinks lead out of the source (``BuildContext.outside_links``) and
    the fix: a source that also holds what the relative ones lead to (the module
    then sits at a ``module_dir`` in it), and relative links for absolute ones,
    which lead nowhere in the engine whatever the source. Said on every build that
    sends such a link, as a note (a link the build never reads, a README say, does
    no harm), and as the hint of a failure that names one."""
    shown = ", ".join(f"{rel} -> {target}" for rel, target in links[:3])
    more = f" and {len(links) - 3} more" if len(links) > 3 else ""
    what = "a symlink" if len(links) == 1 else f"{len(links)} symlinks"
    fixes = []
    if climbing := [(r, t) for r, t in links if not posixpath.isabs(t)]:
        places = [os.path.realpath(root / posixpath.dirname(r) / t) for r, t in climbing]
        parent = Path(os.path.commonpath([os.path.realpath(root), *places]))
        module = os.path.relpath(os.path.realpath(root / module_dir), parent)
        fixes.append(
            f"set source to {str(parent)!r} and module_dir to {module!r}, so that the "
            "engine gets what they lead to as well"
        )
    if absolute := [r for r, t in links if posixpath.isabs(t)]:
        fixes.append(f"make {', '.join(absolute[:3])} relative, within source, or copies")
    return (
        f"source {str(root)!r} sends {what} leading out of it ({shown}{more}); the engine "
        f"gets each link, not what it leads to, so there it leads nowhere: {'; '.join(fixes)}"
    )


def describe_local(params: BuildParams) -> SourceInfo:
    root = params.local_source()
    assert root is not None
    context = build_context(root, params.resolved_output(), use_gitignore=params.use_gitignore)
    if links := context.outside_links():
        advice = outside_links_advice(root, params.module_dir, links)
        progress.note(f"load source: {advice} (a link the build never reads does no harm)")
    _check_go_inputs_sent(params, root, context)
    runtime_dirs = _check_runtime_files_sent(params, context)
    digest, files, kept, excluded, newest = digest_tree(context)
    commit = _git(root, "rev-parse", "HEAD")  # also when the source is a subdirectory
    created = _git(root, "log", "-1", "--format=%cI") if commit else ""
    if not created:
        created = datetime.fromtimestamp(int(newest), UTC).isoformat().replace("+00:00", "Z")
    return SourceInfo(
        kind="local",
        location=str(root),
        commit=commit,
        digest=digest,
        files=files,
        bytes_sent=kept,
        bytes_excluded=excluded,
        excludes=context.excludes,
        created=created,
        vendor_manifests=sorted(
            rel
            for rel, _ in context.entries
            if rel.rsplit("/", 2)[-2:] == ["vendor", "modules.txt"]
        ),
        workspaces=sorted(rel for rel, _ in context.entries if rel.rsplit("/", 1)[-1] == "go.work"),
        runtime_dirs=runtime_dirs,
    )


class GitAccessDenied(PermissionError):
    """The git server wants credentials the build did not give; a retry cannot help."""


async def describe_git(params: BuildParams) -> SourceInfo:
    """Resolve the ref once, so every later stage builds that exact commit.

    Only a full 40-hex SHA is a commit to the engine (anything else is looked up
    as a ref name); the parameter check refuses abbreviated ones before this.
    """
    repo = git_repository(params.source, await git_token(params))
    if _FULL_SHA.fullmatch(params.git_ref):
        ref = repo.commit(params.git_ref)
    else:
        ref = repo.ref(params.git_ref) if params.git_ref else repo.head()
    import dagger

    try:
        commit = await ref.commit()
    except dagger.QueryError as exc:
        if "authentication failed" not in str(exc) or params.git_secret_block:
            raise
        raise GitAccessDenied(
            f"source: {params.source} refused access ({exc}); name a Prefect Secret block "
            "holding a token for it in git_secret_block"
        ) from None
    if os.environ.get("DAGGER_SESSION_PORT") and not _FULL_SHA.fullmatch(params.git_ref):
        # core/git_remote.go caches ls-remote under the session's ID.
        progress.note(
            f"load source: {params.git_ref or 'HEAD'} resolved to {commit[:12]} in a Dagger "
            "session opened outside this build (DAGGER_SESSION_PORT), which lists a git "
            "remote once: a ref moved since its first listing still resolves to the commit "
            "listed then. Pin git_ref to a commit, or give each build a session of its own."
        )
    tree = repo.commit(commit).tree(discard_git_dir=True)
    digest = await tree.digest()
    runtime_dirs = await _git_runtime_dirs(params, tree)
    return SourceInfo(
        kind="git",
        location=params.source,
        ref=params.git_ref or "HEAD",
        commit=commit,
        digest=digest,
        # The engine's git API gives no commit time; like ko, fall back to the Unix
        # epoch rather than the clock.
        created="1970-01-01T00:00:00Z",
        runtime_dirs=runtime_dirs,
    )


async def _git_runtime_dirs(params: BuildParams, tree: dagger.Directory) -> list[str]:
    """As for a local source (``_check_runtime_files_sent``), asking the engine,
    which alone has the tree: before the compile, so a missing path fails first."""
    import dagger

    dirs = []
    for spec, rel, _ in params.runtime_placements()[1]:
        if rel == "." or await tree.exists(rel, expected_type=dagger.ExistsType.DIRECTORY_TYPE):
            dirs.append(rel)
        elif not await tree.exists(rel):
            raise ParamsError(
                [
                    f"runtime_files: {spec!r}: {rel!r} is not in {params.source} "
                    f"at {params.git_ref or 'HEAD'}"
                ]
            )
    return dirs


@task(name="load source", **retry_options())
async def load_source(params: BuildParams) -> SourceInfo:
    """Never cached: deciding whether anything changed is this stage's whole job."""
    if params.is_git_source:
        await engine_ready()
        return await describe_git(params)
    return describe_local(params)
