"""The build context of a local source: exactly which files the engine receives.

Stage 1 digests the context and the digest keys the compile cache, so the files
digested and the files the engine syncs must be the same list. The engine only
takes exclude patterns (``host().directory(path, exclude=…)``), matched with
moby/patternmatcher; this module decides the list, and spells it as patterns the
engine reads the same way.

Two ignore files decide the list:

* ``.gitignore`` belongs to git, and git applies it to untracked files only: a
  ``.gitignore`` line ``svc`` naming the built binary must not drop the tracked
  ``cmd/svc/`` package. So in a git checkout the context is what ``git ls-files
  --cached --others --exclude-standard`` lists (every tracked file, and the
  untracked ones git does not ignore): git's own reading of every nested
  ``.gitignore``, ``.git/info/exclude`` and ``core.excludesFile``, in one call.
  A directory git lists whole (a submodule, a nested repository) is sent whole.
  Outside a checkout ``.gitignore`` is not applied at all: there is no index to
  be untracked from, Docker never reads it, and neither does the engine unless
  asked. Nor when git lists nothing under the source (the whole directory is
  ignored by an enclosing checkout): an empty context is never what was meant.
  Use ``.dockerignore`` to leave files out there. The ``use_gitignore`` parameter
  turns git's part off, for files a checkout generates and ignores but the build
  needs (a web app's ``dist/`` under ``//go:embed``).
* ``.dockerignore`` at the source root is read as Docker reads it (patternmatcher's
  ``ignorefile.ReadAll``) and matched as Docker and the engine match it
  (patternmatcher ``New`` + ``MatchesUsingParentResults``, the engine's
  ``internal/fsutil/filter.go``): anchored at the root (``docs`` is ``./docs``,
  not ``internal/docs``), ``*`` and ``?`` stop at ``/``, ``**`` crosses it, a
  pattern naming a directory covers everything in it, ``!`` re-includes, the last
  matching pattern wins, ``#`` starts a comment.

What the engine gets, in this order: the ``.dockerignore`` patterns, unchanged but
for the few the engine would read differently from Docker (below); ``**/.git`` and
``**/.git/**``; then one literal pattern per path left out for another reason: the
output tarball when it lies inside the source, sockets and other special files,
and what git leaves out (one per file, or ``D`` and ``D/**`` for a directory git
leaves out whole, so ``node_modules/`` costs two patterns, not one per file).
These come last, so no ``!`` exception of ``.dockerignore`` re-includes them, and
they are all plain excludes, so the engine's result is ".dockerignore excludes it,
or one of them names it (or a directory above it)": what :func:`build_context`
computes. ``D/**`` is needed besides ``D``: patternmatcher does not evaluate an
exclude pattern on a path an earlier pattern already excluded, so a directory
``.dockerignore`` excludes never records that it matched ``D``, and a later
``!`` exception would then re-include files below it unless a pattern matches
them directly.

How patterns are read and matched, and how literal paths are escaped: see
:mod:`tasks.dockerignore`.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import stat
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tasks.dockerignore import (
    MatchInfo,
    PatternError,
    PatternMatcher,
    first_line_not_utf8,
    for_engine,
    literal,
    read_ignore_file,
)
from tasks.image_store import store_dir

DOCKERIGNORE = ".dockerignore"
GIT_DIR = ".git"
# Always sent as excludes after the .dockerignore patterns: .git at any depth (a
# submodule's .git file too; Go's VCS stamping trips over one it cannot read).
ALWAYS_EXCLUDE = ["**/.git", "**/.git/**"]
GIT_TIMEOUT = 120


# --------------------------------------------------------------------------- the context


@dataclass
class BuildContext:
    """What the engine receives of a local source, and how to ask it for that."""

    root: Path
    # (relative path, lstat) of every file and symlink sent, in walk order
    entries: list[tuple[str, os.stat_result]]
    excludes: list[str]  # for host().directory(exclude=…)
    bytes_excluded: int = 0
    from_git: bool = False

    @property
    def files(self) -> list[str]:
        return sorted(rel for rel, _ in self.entries)

    def outside_links(self) -> list[tuple[str, str]]:
        """(path, target) of each symlink sent whose target is not in the source:
        an absolute path, or one that climbs out of it. The engine recreates a link
        as it is, not what it leads to (engine/filesync/localfs.go ``Symlink``), and
        has nothing beside the source, so there such a link leads nowhere, though
        ``go build`` on this machine follows it (a shared package linked into a
        service, a monorepo's habit)."""
        found = []
        for rel, st in self.entries:
            if not stat.S_ISLNK(st.st_mode):
                continue
            try:
                target = os.readlink(self.root / rel)
            except OSError:
                continue
            joined = posixpath.normpath(posixpath.join(posixpath.dirname(rel), target))
            if posixpath.isabs(target) or joined == ".." or joined.startswith("../"):
                found.append((rel, target))
        return sorted(found)


@dataclass
class _GitListing:
    files: set[str]
    whole: set[str]  # directories git lists as one entry: submodules, nested repositories
    dirs: set[str]  # every directory holding something listed


def git_listing(root: Path) -> _GitListing | None:
    """What git would put in a commit of ``root`` now (tracked, plus untracked
    and not ignored); None outside a checkout, without git, or when git lists
    nothing under ``root``."""
    names = _ls_files(root)
    if names is None:
        return None
    listing = _GitListing(set(), set(), set())
    for name in names:
        if name.endswith("/"):  # an untracked nested repository
            name = name.rstrip("/")
            listing.whole.add(name)
        else:
            listing.files.add(name)
        while "/" in name:
            name = name.rsplit("/", 1)[0]
            if name in listing.dirs:
                break
            listing.dirs.add(name)
    if not listing.files and not listing.whole:
        return None
    return listing


def would_send(root: Path, rel: str, *, known: str, use_gitignore: bool = True) -> bool:
    """Whether :func:`build_context` of ``root`` would send the file ``rel``,
    decided for that path alone: for a file read before the context is built (a
    workspace's go.work, at parameter time), where a walk of the whole source per
    question would cost a build context each. ``known`` is a file the context
    holds whenever git decides at all (the module's go.mod): git listing neither
    means it does not decide (no checkout, nothing listed under the source, or a
    nested repository sent whole), as :func:`git_listing` returns None then."""
    parts = rel.split("/")
    if GIT_DIR in parts:
        return False
    if use_gitignore and _git_keeps(root, rel, known) is False:
        return False
    try:
        _, matcher = read_dockerignore(root)
    except PatternError:
        return True  # the load source stage names the file and its problem
    if not matcher:
        return True
    info: MatchInfo = ()
    for depth in range(1, len(parts) + 1):
        excluded, info = matcher.match("/".join(parts[:depth]), info)
        if excluded and (depth == len(parts) or not matcher.exclusions):
            return False  # as _Walk.visit decides, directory by directory
    return True


def _git_keeps(root: Path, rel: str, known: str) -> bool | None:
    """Whether git's listing keeps the file ``rel`` (:func:`would_send`); None
    where git does not decide."""
    listed = _git_lists(root, [rel, known])
    if listed is None:
        return None
    if rel in listed:
        return True
    if known not in listed:
        return None
    parts = rel.split("/")
    for depth in range(1, len(parts)):
        above = "/".join(parts[:depth])
        if os.path.lexists(root / above / GIT_DIR):
            # A nested repository or a submodule: listed whole (``above/`` or the
            # gitlink) unless git ignores it, and sent whole then (_listed_whole).
            return above in {name.rstrip("/") for name in _git_lists(root, [above]) or ()}
    return False


def _git_lists(root: Path, paths: list[str]) -> set[str] | None:
    """Which of ``paths`` git lists as :func:`git_listing` does (the pathspecs
    keep git to them); None outside a checkout or without git."""
    names = _ls_files(root, paths)
    return None if names is None else set(names)


def _ls_files(root: Path, paths: Sequence[str] = ()) -> list[str] | None:
    """``git ls-files`` of what a commit of ``root`` would hold now (tracked, plus
    untracked and not ignored), relative to ``root``, limited to ``paths`` (taken
    literally) if given; None outside a checkout or without git."""
    args = ["ls-files", "-z", "--cached", "--others", "--exclude-standard", "--", *paths]
    try:
        proc = subprocess.run(
            ["git", "--literal-pathspecs", "-C", str(root), *args],
            capture_output=True,
            check=False,
            timeout=GIT_TIMEOUT,
        )
    except OSError:
        return None
    if proc.returncode != 0:
        return None
    return [os.fsdecode(raw) for raw in proc.stdout.split(b"\0") if raw]


def read_dockerignore(root: Path) -> tuple[list[str], PatternMatcher]:
    """The .dockerignore patterns as the engine is to get them, and their matcher
    (which refuses what Docker would refuse, naming the file)."""
    try:
        data = (root / DOCKERIGNORE).read_bytes()
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        return [], PatternMatcher([])
    if (line := first_line_not_utf8(data)) is not None:
        raise PatternError(
            f"{root / DOCKERIGNORE}: line {line} is not valid UTF-8, and the engine "
            "takes patterns as text; write the file as UTF-8"
        )
    every = read_ignore_file(data)
    patterns = for_engine(every)
    try:
        PatternMatcher(every)  # Docker refuses a bad pattern, also one the engine drops
        return patterns, PatternMatcher(patterns)
    except PatternError as exc:
        raise PatternError(f"{root / DOCKERIGNORE}: {exc}") from None


def build_context(
    root: Path, output: Path | None = None, *, use_gitignore: bool = True
) -> BuildContext:
    """The files of ``root`` the engine will receive, and the excludes that make
    it send exactly those (module docstring). One walk, one ``git ls-files``;
    without ``use_gitignore``, no git: the directory as ``docker build`` sends it,
    ``.dockerignore`` alone deciding (generated files a ``//go:embed`` needs that
    git ignores, such as a web app's ``dist/``)."""
    dockerignore, matcher = read_dockerignore(root)
    walk = _Walk(root, matcher, git_listing(root) if use_gitignore else None)
    if output is not None:
        # The output tarball and the image store beside it, when inside the source.
        # Relative, not "/…": the engine silently drops patterns that are not local
        # paths (core/schema/host.go), and would then send them.
        for path, is_dir in ((output, False), (store_dir(output), True)):
            with contextlib.suppress(ValueError):
                rel = path.resolve().relative_to(root.resolve()).as_posix()
                walk.skip.add(rel)
                walk.tail += [literal(rel), literal(rel) + "/**"] if is_dir else [literal(rel)]
    walk.visit("", str(root), (), whole=False)
    return BuildContext(
        root=root,
        entries=walk.kept,
        excludes=[*dockerignore, *ALWAYS_EXCLUDE, *walk.tail],
        bytes_excluded=walk.excluded,
        from_git=walk.git is not None,
    )


def context_files(root: Path, output: Path | None = None) -> list[str]:
    """The relative paths (files and symlinks) the engine receives, sorted."""
    return build_context(root, output).files


@dataclass
class _Walk:
    root: Path
    dock: PatternMatcher
    git: _GitListing | None
    skip: set[str] = field(default_factory=set)  # our own outputs
    kept: list[tuple[str, os.stat_result]] = field(default_factory=list)
    tail: list[str] = field(default_factory=list)  # literal excludes after the fixed ones
    excluded: int = 0

    def visit(
        self, rel_dir: str, path: str, info: MatchInfo, whole: bool, dir_excluded: bool = False
    ) -> None:
        """Walk the directory ``path`` (``rel_dir``: its relative path and a ``/``).
        ``info``: the .dockerignore matcher's results for it; ``whole``: git lists
        it as one entry; ``dir_excluded``: .dockerignore excludes it (walked only
        for its ``!`` exceptions; unreadable, it is skipped, as the engine's sync
        skips it)."""
        try:
            with os.scandir(path) as it:
                entries = sorted(it, key=lambda e: e.name)
        except PermissionError:
            if dir_excluded:
                return
            raise
        for entry in entries:
            rel = rel_dir + entry.name
            st = entry.stat(follow_symlinks=False)
            is_dir = stat.S_ISDIR(st.st_mode)
            if entry.name == GIT_DIR or rel in self.skip:
                self._skip(entry.path, st, is_dir)
                continue
            sub_whole = whole
            if self.git is not None and not whole:
                if is_dir and self._listed_whole(rel, entry.path):
                    sub_whole = True
                elif is_dir and rel not in self.git.dirs:
                    self.tail += [literal(rel), literal(rel) + "/**"]
                    self._skip(entry.path, st, is_dir)
                    continue
                elif not is_dir and rel not in self.git.files:
                    self.tail.append(literal(rel))
                    self._skip(entry.path, st, is_dir)
                    continue
            excluded, child = self.dock.match(rel, info) if self.dock else (False, ())
            if is_dir:
                if excluded and not self.dock.exclusions:
                    self._skip(entry.path, st, is_dir)
                    continue
                self.visit(rel + "/", entry.path, child, sub_whole, excluded)
                continue
            if not (stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode)):
                if not excluded:
                    self.tail.append(literal(rel))  # a socket or fifo: not sent either
                continue
            if excluded:
                self.excluded += st.st_size
            else:
                self.kept.append((rel, st))

    def _listed_whole(self, rel: str, path: str) -> bool:
        """A directory git lists as one entry: a nested repository (``--others``
        lists it with a trailing ``/``) or a submodule's checkout (``--cached``
        lists the gitlink; it has a ``.git``). Sent whole, as git does not look in."""
        assert self.git is not None
        if rel in self.git.whole:
            return True
        return rel in self.git.files and os.path.lexists(os.path.join(path, GIT_DIR))

    def _skip(self, path: str, st: os.stat_result, is_dir: bool) -> None:
        self.excluded += _du(path) if is_dir else st.st_size


def _du(path: str) -> int:
    total = 0
    for dirpath, _dirs, filenames in os.walk(path):
        for name in filenames:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, name)).st_size
    return total
