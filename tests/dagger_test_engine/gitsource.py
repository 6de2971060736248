"""Git sources of the Dagger test engine, fetched with the host's git.

Written from the engine's own code (dagger v0.21.8):

* URLs (``util/gitutil/url.go``): ``scheme://`` URLs are accepted for ``http``,
  ``https``, ``ssh`` and ``git`` only (anything else, ``file://`` included, is
  ``invalid protocol "file"``); ``user@host:path`` is SSH; a URL with no scheme
  is tried as ``https://`` then ``ssh://`` (``core/schema/git.go`` ~237-330).
* Refs (``util/gitutil/ls_remote.go``): ``git ls-remote --symref`` once per
  repository and session, then ``Lookup`` with git-checkout preferences; only a
  full 40-hex SHA is a commit (``util/gitutil/commit.go``).
* Auth (``util/gitutil/cli.go`` ~133-162): ``httpAuthToken`` becomes HTTP Basic
  ``<username or x-access-token>:<token>``, ``httpAuthHeader`` is the whole
  Authorization value; either is given to git as ``http.<scheme>://<host>/.
  extraheader`` through ``GIT_CONFIG_*`` environment variables, never argv.
* Trees (``core/git_remote.go``, ``core/git.go`` ``doGitCheckout``): objects are
  fetched by SHA into an engine-wide bare mirror, then checked out into a fresh
  repository that keeps its ``.git`` (with ``origin`` set to the URL) unless
  ``discardGitDir``.
* Errors (``util/gitutil/error.go``): ``git error: `` plus a translation of
  git's stderr (``git authentication failed``, …) or just the exit status.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import secrets
import shutil
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

SUPPORTED = ("http", "https", "ssh", "git")
_PROTO = re.compile(r"^[a-zA-Z0-9]+://")
_SCP = re.compile(r"^([a-zA-Z0-9_-]+)@([a-zA-Z0-9.-]+):(.*?)(?:#(.*))?$")
_SHA = re.compile(r"[0-9a-f]{40}")


class GitError(Exception):
    """An error with the engine's wording; ``kind`` classifies it."""

    def __init__(self, message: str, kind: str = "", stderr: str = "") -> None:
        super().__init__(message)
        self.kind = kind
        self.stderr = stderr


def is_commit_sha(s: str) -> bool:
    return bool(_SHA.fullmatch(s))


# --------------------------------------------------------------------------- URLs


@dataclass(frozen=True)
class GitURL:
    scheme: str
    host: str
    path: str
    user: str = ""
    scp: bool = False

    def remote(self) -> str:
        """The URL handed to git (``GitURL.Remote``: no fragment)."""
        if self.scp:
            return f"{self.user}@{self.host}:{self.path}"
        auth = f"{self.user}@" if self.user else ""
        return f"{self.scheme}://{auth}{self.host}{self.path}"


def parse_git_url(raw: str) -> GitURL:
    """``gitutil.ParseURL``; raises GitError kind ``unknown-protocol`` or
    ``invalid-protocol``."""
    m = _PROTO.match(raw)
    if m:
        proto = m.group(0)[:-3].lower()
        if proto not in SUPPORTED:
            raise GitError(f'invalid protocol "{proto}"', "invalid-protocol")
        u = urlsplit(raw)
        user = ""
        if "@" in u.netloc:
            user = u.netloc.rsplit("@", 1)[0]
        host = u.netloc.rsplit("@", 1)[-1]
        return GitURL(u.scheme.lower(), host, u.path, user)
    m = _SCP.match(raw)
    if m:
        return GitURL("ssh", m.group(2), m.group(3), m.group(1), scp=True)
    raise GitError("unknown protocol", "unknown-protocol")


def basic_auth_header(url: GitURL, token: str, username: str = "") -> str:
    if not username:
        username = "x-token-auth" if url.host == "bitbucket.org" else "x-access-token"
    return "Basic " + base64.b64encode(f"{username}:{token}".encode()).decode()


@dataclass(frozen=True)
class GitAuth:
    """An Authorization header for one remote. ``repr`` never shows it."""

    base: str  # scheme://host
    header: str

    def __repr__(self) -> str:
        return f"GitAuth({self.base}, <redacted>)"

    @classmethod
    def for_url(cls, url: GitURL, header: str) -> GitAuth | None:
        if url.scheme not in ("http", "https"):
            return None  # the engine only sets it for HTTP(S) remotes
        return cls(f"{url.scheme}://{url.host}", header)

    def env(self) -> dict[str, str]:
        return {
            "GIT_CONFIG_COUNT": "1",
            "GIT_CONFIG_KEY_0": f"http.{self.base}/.extraheader",
            "GIT_CONFIG_VALUE_0": f"Authorization: {self.header}",
        }


# --------------------------------------------------------------------------- ls-remote


@dataclass
class Ref:
    name: str  # refs/heads/main, refs/tags/v1, or "" for a bare commit
    sha: str


@dataclass
class Remote:
    refs: list[Ref]
    symrefs: dict[str, str]

    @classmethod
    def parse(cls, out: str) -> Remote:
        refs: list[Ref] = []
        symrefs: dict[str, str] = {}
        for line in out.split("\n"):
            k, sep, v = line.partition("\t")
            if not sep:
                continue
            if k.startswith("ref: "):
                symrefs[v] = k[len("ref: ") :]
            else:
                refs.append(Ref(v, k))
        return cls(refs, symrefs)

    def lookup(self, target: str) -> Ref:
        """``Remote.Lookup``: git-checkout's choice of ref for ``target``."""
        if is_commit_sha(target):
            return Ref("", target)
        bare = target.removeprefix("refs/")
        partial = "refs/" + bare
        head = "refs/heads/" + target.removeprefix("refs/heads/")
        tag = "refs/tags/" + target.removeprefix("refs/tags/")
        match = head_match = tag_match = None
        for ref in self.refs:
            if ref.name == head:
                head_match = ref
            elif ref.name in (tag, tag + "^{}"):
                tag_match = Ref(tag, ref.sha)
            elif ref.name in (partial, target):
                match = ref
        found = match or head_match or tag_match
        if found is None:
            raise GitError(f'repository does not contain ref "{target}"', "no-ref")
        if not is_commit_sha(found.sha):
            raise GitError(f'invalid commit sha "{found.sha}" for "{found.name}"')
        return Ref(self.symrefs.get(found.name, found.name), found.sha)


# --------------------------------------------------------------------------- git CLI


def _translate(stderr: str, returncode: int) -> tuple[str, str]:
    low = stderr.lower()
    if any(
        s in low
        for s in (
            "authentication failed",
            "authentication required",
            "fatal: could not read username",
            "fatal: could not read password",
        )
    ):
        return "git authentication failed", "auth"
    if "not a git repository" in low:
        return "not a git repository", "no-repo"
    if "does not support shallow" in low:
        return "shallow clone not supported", "shallow"
    if any(s in low for s in ("unadvertised object", "not our ref", "couldn't find remote ref")):
        return "sha fetch unsupported by remote", "sha-fetch"
    return f"exit status {returncode}", ""


def run_git(
    *args: str,
    auth: GitAuth | None = None,
    git_dir: Path | None = None,
    work_tree: Path | None = None,
    ignore_error: bool = False,
) -> str:
    """Run the host's git the way ``gitutil.GitCLI.Run`` does; -> stdout."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_SSH_COMMAND": "ssh -F /dev/null -o StrictHostKeyChecking=no",
        "GIT_ASKPASS": "echo",
        "GIT_CONFIG_NOSYSTEM": "1",
        "HOME": "/dev/null",
        "LC_ALL": "C",
    }
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "ALL_PROXY"):
        for key in (name, name.lower()):
            if key in os.environ:
                env[key] = os.environ[key]
    if auth is not None:
        env.update(auth.env())
    cmd = ["git", "-c", "protocol.file.allow=user"]
    if work_tree is not None:
        cmd += ["--work-tree", str(work_tree)]
    if git_dir is not None:
        cmd += ["--git-dir", str(git_dir)]
    cmd += list(args)
    r = subprocess.run(
        cmd,
        cwd=work_tree,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        check=False,
    )
    if r.returncode != 0:
        if ignore_error:
            return r.stdout
        message, kind = _translate(r.stderr, r.returncode)
        raise GitError(f"git error: {message}", kind, r.stderr)
    return r.stdout


# --------------------------------------------------------------------------- engine side


class GitSources:
    """Engine-wide git state: bare mirrors per remote, checked-out trees."""

    def __init__(self, state_dir: Path, import_tree) -> None:
        self.mirrors = state_dir / "git-mirrors"
        self.scratch = state_dir / "git-checkouts"
        self._import_tree = import_tree  # Path -> fs.Tree
        self._locks: dict[str, threading.Lock] = {}
        self._locks_lock = threading.Lock()
        self._trees: dict[tuple, object] = {}

    def _lock(self, key: str) -> threading.Lock:
        with self._locks_lock:
            return self._locks.setdefault(key, threading.Lock())

    def ls_remote(self, url: GitURL, auth: GitAuth | None) -> Remote:
        return Remote.parse(run_git("ls-remote", "--symref", url.remote(), auth=auth))

    def tree(self, url: GitURL, ref: Ref, auth: GitAuth | None, discard: bool, depth: int):
        key = (url.remote(), ref.sha, ref.name, discard, depth, auth is not None)
        with self._lock(repr(key)):
            cached = self._trees.get(key)
            if cached is not None:
                return cached
            mirror = self._fetch(url, ref, auth, depth)
            tree = self._checkout(url, mirror, ref, discard, depth)
            self._trees[key] = tree
            return tree

    def _fetch(self, url: GitURL, ref: Ref, auth: GitAuth | None, depth: int) -> Path:
        remote = url.remote()
        mirror = self.mirrors / hashlib.sha256(remote.encode()).hexdigest()[:24]
        with self._lock("mirror:" + remote):
            if not (mirror / "HEAD").exists():
                mirror.mkdir(parents=True, exist_ok=True)
                run_git(
                    "-c", "init.defaultBranch=main", "init", "--bare", "--quiet", git_dir=mirror
                )
                run_git("remote", "add", "origin", remote, git_dir=mirror)
            have = run_git(
                "rev-parse", "--verify", ref.sha + "^{commit}", git_dir=mirror, ignore_error=True
            ).strip()
            fetch = have != ref.sha
            shallow = (mirror / "shallow").exists()
            if not fetch and shallow:
                if depth <= 0:
                    fetch = True
                else:
                    count = run_git(
                        "rev-list", "--first-parent", "--count", ref.sha, git_dir=mirror
                    ).strip()
                    fetch = int(count or 0) < depth
            if fetch:
                self._fetch_sha(mirror, url, ref, auth, depth, shallow)
            run_git("reflog", "expire", "--all", "--expire=now", git_dir=mirror)
        return mirror

    def _fetch_sha(self, mirror: Path, url: GitURL, ref: Ref, auth, depth: int, shallow: bool):
        remote = url.remote()

        def fetch(specs: list[str]) -> None:
            args = ["fetch", "--no-tags", "--update-head-ok", "--force"]
            if depth <= 0:
                if shallow:
                    args.append("--unshallow")
            else:
                args.append(f"--depth={depth}")
            try:
                run_git(*args, "origin", *specs, auth=auth, git_dir=mirror)
            except GitError as exc:
                if exc.kind != "shallow":
                    raise
                args = [a for a in args if not a.startswith("--depth")]
                run_git(*args, "origin", *specs, auth=auth, git_dir=mirror)

        try:
            fetch([ref.sha])
        except GitError as exc:
            if exc.kind != "sha-fetch" or not ref.name or is_commit_sha(ref.name):
                raise GitError(f"failed to fetch remote {remote}: {exc}", exc.kind) from None
            stable = hashlib.sha256(f"{ref.name}\0{ref.sha}".encode()).hexdigest()
            spec = f"{ref.name}:refs/dagger.fetch/{stable}"
            try:
                fetch([spec])
            except GitError as retry:
                raise GitError(
                    f"failed to fetch remote {remote}: sha fetch failed: {exc}; "
                    f"named-ref retry failed: {retry}",
                    retry.kind,
                ) from None
            got = run_git(
                "rev-parse", "--verify", ref.sha + "^{commit}", git_dir=mirror, ignore_error=True
            ).strip()
            if got != ref.sha:
                raise GitError(
                    f"failed to fetch remote {remote}: named-ref retry verification failed: "
                    f'named-ref retry did not materialize expected sha {ref.sha} for "{ref.name}"'
                ) from None

    def _checkout(self, url: GitURL, mirror: Path, ref: Ref, discard: bool, depth: int):
        self.scratch.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=self.scratch))
        work = tmp / "checkout"
        work.mkdir(mode=0o711)
        dot_git = work / ".git"

        def git(*args: str) -> str:
            return run_git(*args, work_tree=work, git_dir=dot_git)

        try:
            try:
                git("-c", "init.defaultBranch=main", "init", "--quiet")
                tmpref = "refs/dagger.tmp/" + secrets.token_hex(8)
                args = ["fetch", "-u"] + ([f"--depth={depth}"] if depth > 0 else [])
                git(*args, str(mirror), f"{ref.sha}:{tmpref}")
                if not ref.name:
                    git("checkout", "--quiet", ref.sha)
                else:
                    git("update-ref", ref.name, ref.sha)
                    git("checkout", "--quiet", ref.name.removeprefix("refs/heads/"))
                    git("reset", "--quiet", "--hard", ref.sha)
                git("remote", "add", "origin", url.remote())
                git("update-ref", "-d", tmpref)
                git("reflog", "expire", "--all", "--expire=now")
                (dot_git / "FETCH_HEAD").unlink(missing_ok=True)
                try:
                    git("submodule", "update", "--init", "--recursive", "--depth=1")
                except GitError as exc:
                    if exc.kind != "shallow":
                        raise
                    git("submodule", "update", "--init", "--recursive")
                if not discard:
                    git("read-tree", "HEAD")
                else:
                    shutil.rmtree(dot_git)
            except GitError as exc:
                raise GitError(
                    f"failed to checkout {ref.name} in {url.remote()}: {exc}", exc.kind
                ) from None
            return self._import_tree(work)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
