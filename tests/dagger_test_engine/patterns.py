"""Path patterns the way the Dagger engine matches them.

Three pieces, each written from the behaviour of the code the engine uses:

* ``PatternMatcher``: moby/patternmatcher v0.6.1 (``patternmatcher.go``), the
  .dockerignore semantics behind every include/exclude in Dagger
  (``internal/fsutil/filter.go`` for ``host().directory``,
  ``util/layercopy/filter.go`` for ``withDirectory``): patterns are cleaned and
  anchored at the root, ``*`` and ``?`` never cross ``/``, ``**`` does, ``!``
  re-includes, and a pattern that matches a directory matches everything in it
  (through the parent's per-pattern results, ``MatchesUsingParentResults``).
* ``host_patterns``: what ``core/schema/host.go`` (~225-260) does to the
  caller's patterns before they reach the matcher: one leading ``!`` is set
  aside, patterns that are not local paths (absolute, empty, climbing out with
  ``..``) are silently dropped, the rest are joined to the copy root and
  cleaned, and ``.`` becomes ``*``.
* ``GitIgnore``: ``.gitignore`` files read the way ``util/fsxutil/
  gitignore_matcher.go`` reads them with go-git's ``plumbing/format/gitignore``
  (v5.17.2): every ``.gitignore`` from the root down to a path's directory, the
  last matching pattern deciding.

docker-py's ``docker.utils.build.PatternMatcher`` was considered and not used:
on patternmatcher's own test cases it differs (it lowercases both sides, so
matching is case-insensitive; it checks only one parent prefix, the deprecated
``Matches``; it always appends ``!.dockerignore``; it has no ``\\`` escapes and no
syntax errors for malformed classes).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path


class PatternError(ValueError):
    """A malformed pattern (Go's ``filepath.ErrBadPattern``)."""


BAD_PATTERN = "syntax error in pattern"


# --------------------------------------------------------------------------- Go path helpers


def go_clean(p: str) -> str:
    """Go's ``path.Clean`` (``filepath.Clean`` on Unix)."""
    if p == "":
        return "."
    rooted = p.startswith("/")
    parts: list[str] = []
    for seg in p.split("/"):
        if seg in ("", "."):
            continue
        if seg == "..":
            if parts and parts[-1] != "..":
                parts.pop()
            elif not rooted:
                parts.append("..")
            continue
        parts.append(seg)
    out = "/".join(parts)
    if rooted:
        return "/" + out
    return out or "."


def is_local(p: str) -> bool:
    """Go's ``filepath.IsLocal`` on Unix: relative, not empty, not escaping."""
    if p == "" or p.startswith("/"):
        return False
    if any(part in (".", "..") for part in p.split("/")):
        p = go_clean(p)
    return not (p == ".." or p.startswith("../"))


def _go_join(base: str, p: str) -> str:
    """Go's ``filepath.Join`` of two elements (empty ones are ignored)."""
    if not base:
        return go_clean(p) if p else ""
    if not p:
        return go_clean(base)
    return go_clean(base + "/" + p)


def host_patterns(patterns, rel_root: str = ".") -> list[str]:
    """The caller's include or exclude list as ``host.directory`` hands it on."""
    out: list[str] = []
    for pattern in patterns or ():
        negative = pattern.startswith("!")
        if negative:
            pattern = pattern[1:]
        if not is_local(pattern):
            continue  # e.g. "/abs", "../x", "" : dropped without a word
        pattern = _go_join(rel_root, pattern)
        if pattern == ".":
            pattern = "*"
        out.append("!" + pattern if negative else pattern)
    return out


# --------------------------------------------------------------------------- Go globs


def _class_end(pat: str, i: int) -> tuple[int, list[tuple[str, str]], bool]:
    """Parse a ``[...]`` class of Go's ``filepath.Match`` starting after ``[``
    at ``i``; -> (index after ``]``, ranges, negated). Raises on bad syntax."""

    def esc(j: int) -> tuple[str, int]:
        if j >= len(pat) or pat[j] in "-]":
            raise PatternError(BAD_PATTERN)
        if pat[j] == "\\":
            j += 1
            if j >= len(pat):
                raise PatternError(BAD_PATTERN)
        ch = pat[j]
        j += 1
        if j >= len(pat):  # a class must be closed
            raise PatternError(BAD_PATTERN)
        return ch, j

    negated = False
    if i < len(pat) and pat[i] == "^":
        negated = True
        i += 1
    ranges: list[tuple[str, str]] = []
    while True:
        if i < len(pat) and pat[i] == "]" and ranges:
            return i + 1, ranges, negated
        lo, i = esc(i)
        hi = lo
        if pat[i] == "-":
            hi, i = esc(i + 1)
        ranges.append((lo, hi))


def validate_glob(pat: str) -> None:
    """Raise ``PatternError`` where Go's ``filepath.Match(pat, …)`` reports
    ``ErrBadPattern`` (it checks the whole pattern)."""
    i = 0
    while i < len(pat):
        ch = pat[i]
        if ch == "[":
            i, _, _ = _class_end(pat, i + 1)
            continue
        if ch == "\\":
            if i + 1 >= len(pat):
                raise PatternError(BAD_PATTERN)
            i += 2
            continue
        i += 1


def _glob_regex(pat: str) -> str:
    """A Go ``filepath.Match`` pattern as a Python regex (for ``fullmatch``)."""
    out: list[str] = []
    i = 0
    while i < len(pat):
        ch = pat[i]
        if ch == "*":
            out.append("[^/]*")
        elif ch == "?":
            out.append("[^/]")
        elif ch == "[":
            i, ranges, negated = _class_end(pat, i + 1)
            body = "".join(
                re.escape(lo) if lo == hi else f"{re.escape(lo)}-{re.escape(hi)}"
                for lo, hi in ranges
            )
            out.append(f"[{'^' if negated else ''}{body}]")
            continue
        elif ch == "\\":
            i += 1
            out.append(re.escape(pat[i]))
        else:
            out.append(re.escape(ch))
        i += 1
    return "".join(out)


_GLOB_CACHE: dict[str, re.Pattern[str] | None] = {}


def go_match(pat: str, name: str) -> bool:
    """Go's ``filepath.Match`` (a malformed pattern matches nothing)."""
    rx = _GLOB_CACHE.get(pat, False)
    if rx is False:
        try:
            validate_glob(pat)
            rx = re.compile(_glob_regex(pat), re.DOTALL)
        except (PatternError, re.error):
            rx = None
        _GLOB_CACHE[pat] = rx
    return rx is not None and rx.fullmatch(name) is not None


# --------------------------------------------------------------------------- patternmatcher


# Not "|{}": moby's code means to escape them too, but its bit test shifts them
# out, so in Docker and the engine they keep their regexp meaning.
_REGEX_ESCAPES = set(".+()$")


@dataclass
class Pattern:
    """One cleaned pattern; matching as in patternmatcher's ``Pattern.match``."""

    cleaned: str
    exclusion: bool
    kind: str = ""  # exact | prefix | suffix | regexp
    regex: re.Pattern[str] | None = None

    def __post_init__(self) -> None:
        self._compile()

    def _compile(self) -> None:
        pat = self.cleaned
        rx: list[str] = []
        kind = "exact"
        pos, step = 0, 0
        while pos < len(pat):
            ch = pat[pos]
            pos += 1
            if ch == "*":
                if pos < len(pat) and pat[pos] == "*":
                    pos += 1
                    if pos < len(pat) and pat[pos] == "/":
                        pos += 1  # "**/" is "**"
                    if pos >= len(pat):  # trailing "**": everything below
                        if kind == "exact":
                            kind = "prefix"
                        else:
                            rx.append(".*")
                            kind = "regexp"
                    else:
                        rx.append("(.*/)?")
                        kind = "regexp"
                    if step == 0:
                        kind = "suffix"
                else:
                    rx.append("[^/]*")
                    kind = "regexp"
            elif ch == "?":
                rx.append("[^/]")
                kind = "regexp"
            elif ch in _REGEX_ESCAPES:
                rx.append("\\" + ch)
            elif ch == "\\":
                if pos < len(pat):
                    nxt = pat[pos]
                    # Go's regexp gives "\\d", "\\w", "\\s", "\\b" their class meaning too
                    plain = nxt.isalnum() and nxt not in "dDsSwWbB"
                    rx.append(nxt if plain else "\\" + nxt)
                    pos += 1
                    kind = "regexp"
                else:
                    rx.append("\\\\")
            elif ch in "[]":
                rx.append(ch)
                kind = "regexp"
            else:
                rx.append(ch)  # "^" stays an anchor, as in Go's regexp
            step += 1
        self.kind = kind
        if kind == "regexp":
            try:
                self.regex = re.compile("".join(rx))  # Go: "." does not match a newline
            except re.error as exc:
                raise PatternError(BAD_PATTERN) from exc

    def match(self, path: str) -> bool:
        if self.kind == "exact":
            return path == self.cleaned
        if self.kind == "prefix":
            return path.startswith(self.cleaned[:-2])
        if self.kind == "suffix":
            suffix = self.cleaned[2:]
            if path.endswith(suffix):
                return True
            return suffix[:1] == "/" and path == suffix[1:]
        assert self.regex is not None
        return self.regex.fullmatch(path) is not None


MatchInfo = tuple[bool, ...]  # per pattern: did it match this directory (or a parent)?


class PatternMatcher:
    """moby/patternmatcher's ``New`` + ``MatchesUsingParentResults``."""

    def __init__(self, patterns) -> None:
        self.patterns: list[Pattern] = []
        self.exclusions = False
        for raw in patterns or ():
            p = raw.strip()
            if not p:
                continue
            p = go_clean(p)
            exclusion = False
            if p[0] == "!":
                if len(p) == 1:
                    raise PatternError('illegal exclusion pattern: "!"')
                exclusion = True
                p = p[1:]
                self.exclusions = True
            validate_glob(p)
            self.patterns.append(Pattern(p, exclusion))

    def __bool__(self) -> bool:
        return bool(self.patterns)

    def match(self, path: str, parent: MatchInfo = ()) -> tuple[bool, MatchInfo]:
        """Does ``path`` (slash-separated, relative) match, given the results of
        its parent directory (``()`` when unknown: parents are then checked)."""
        matched = False
        info: list[bool] = []
        for i, pattern in enumerate(self.patterns):
            hit = bool(parent) and parent[i]
            if not hit:
                # an inclusion that already matched, or an exclusion with nothing
                # to undo, cannot change the outcome
                if pattern.exclusion != matched:
                    info.append(False)
                    continue
                hit = pattern.match(path)
                if not hit and not parent:
                    dirs = path.split("/")[:-1]
                    for n in range(1, len(dirs) + 1):
                        if pattern.match("/".join(dirs[:n])):
                            hit = True
                            break
            info.append(hit)
            if hit:
                matched = not pattern.exclusion
        return matched, tuple(info)


# --------------------------------------------------------------------------- gitignore


@dataclass(frozen=True)
class _IgnoreLine:
    domain: tuple[str, ...]
    parts: tuple[str, ...]
    inclusion: bool
    dir_only: bool
    is_glob: bool

    @classmethod
    def parse(cls, line: str, domain: tuple[str, ...]) -> _IgnoreLine:
        inclusion = line.startswith("!")
        if inclusion:
            line = line[1:]
        if not line.endswith("\\ "):
            line = line.rstrip(" ")
        dir_only = line.endswith("/")
        if dir_only:
            line = line[:-1]
        return cls(domain, tuple(line.split("/")), inclusion, dir_only, "/" in line)

    def result(self, path: list[str], is_dir: bool) -> int:
        """0: no match, 1: ignore, 2: re-include (go-git's MatchResult)."""
        n = len(self.domain)
        if len(path) <= n or tuple(path[:n]) != self.domain:
            return 0
        rest = path[n:]
        ok = self._glob(rest, is_dir) if self.is_glob else self._name(rest, is_dir)
        if not ok:
            return 0
        return 2 if self.inclusion else 1

    def _name(self, path: list[str], is_dir: bool) -> bool:
        for i, name in enumerate(path):
            if not go_match(self.parts[0], name):
                continue
            return not (self.dir_only and not is_dir and i == len(path) - 1)
        return False

    def _glob(self, path: list[str], is_dir: bool) -> bool:
        matched = traverse = False
        for i, part in enumerate(self.parts):
            if part == "":
                traverse = False
                continue
            if part == "**":
                if i == len(self.parts) - 1:
                    break
                traverse = True
                continue
            if "**" in part:
                return False
            if not path:
                return False
            if traverse:
                traverse = False
                while path:
                    head, path = path[0], path[1:]
                    if go_match(part, head):
                        matched = True
                        break
                    if not path:
                        matched = False
            else:
                if not go_match(part, path[0]):
                    return False
                matched = True
                path = path[1:]
        if matched and self.dir_only and not is_dir and not path:
            matched = False
        return matched


class GitIgnore:
    """``.gitignore`` rules of a host directory tree rooted at ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._lines: dict[str, tuple[_IgnoreLine, ...]] = {}

    def _for_dir(self, rel_dir: str) -> tuple[_IgnoreLine, ...]:
        cached = self._lines.get(rel_dir)
        if cached is not None:
            return cached
        lines: tuple[_IgnoreLine, ...] = ()
        if rel_dir:
            lines = self._for_dir(rel_dir.rsplit("/", 1)[0] if "/" in rel_dir else "")
        domain = tuple(rel_dir.split("/")) if rel_dir else ()
        try:
            text = (self.root / rel_dir / ".gitignore").read_text(errors="replace")
        except OSError:
            text = None
        if text is not None:
            new = [
                _IgnoreLine.parse(s, domain)
                for s in (raw.strip() for raw in text.splitlines())
                if s and not s.startswith("#")
            ]
            lines = lines + tuple(new)
        self._lines[rel_dir] = lines
        return lines

    def ignored(self, rel: str, is_dir: bool) -> bool:
        rel_dir = rel if is_dir else (rel.rsplit("/", 1)[0] if "/" in rel else "")
        path = rel.split("/")
        for line in reversed(self._for_dir(rel_dir)):
            res = line.result(path, is_dir)
            if res:
                return res == 1
        return False


# --------------------------------------------------------------------------- filtering


@dataclass(frozen=True)
class FilterState:
    include: MatchInfo = ()
    exclude: MatchInfo = ()
    included: bool = True  # this path matched the include list (or there is none)
    excluded: bool = False  # this path matched the exclude list


ROOT = FilterState()


class PathFilter:
    """Include/exclude (and gitignore) decisions for a top-down walk.

    ``check(rel, is_dir, parent_state)`` -> (keep, state to pass to children).
    A directory that is not kept still appears when something below it is.
    """

    def __init__(self, include=(), exclude=(), gitignore: GitIgnore | None = None) -> None:
        self.include = PatternMatcher(include)
        self.exclude = PatternMatcher(exclude)
        self.gitignore = gitignore
        # filter.go's walk optimisation: with plain-path includes only, a directory
        # no include can lie under is not walked at all
        self._prefixes = [
            _without_trailing_glob(p.cleaned) for p in self.include.patterns if not p.exclusion
        ]
        self._only_prefix = not any(set(p) & set("*[]?^\\") for p in self._prefixes)

    @property
    def trivial(self) -> bool:
        return not self.include and not self.exclude and self.gitignore is None

    def check(self, rel: str, is_dir: bool, parent: FilterState) -> tuple[bool, FilterState]:
        included, excluded = True, False
        inc, exc = parent.include, parent.exclude
        if self.include:
            included, inc = self.include.match(rel, parent.include)
        if self.exclude:
            excluded, exc = self.exclude.match(rel, parent.exclude)
        keep = included and not excluded
        if keep and self.gitignore is not None and self.gitignore.ignored(rel, is_dir):
            keep = False
        return keep, FilterState(inc, exc, included, excluded)

    def prune(self, rel: str, state: FilterState) -> bool:
        """Whether nothing below the directory ``rel`` (with this state) can be
        kept, so the walk may skip it as filesync does (internal/fsutil/filter.go
        ~232-290): it is excluded and the exclude list has no ``!`` exceptions,
        or it is not included and the include list is plain paths none of which
        lies below it."""
        if state.excluded and self.exclude and not self.exclude.exclusions:
            return True
        if not state.included and self.include and self._only_prefix:
            return not any((p + "/").startswith(rel + "/") for p in self._prefixes)
        return False


def _without_trailing_glob(p: str) -> str:
    return p.removesuffix("/**").removesuffix("/*")


def select(paths, include=(), exclude=()) -> set[str]:
    """Of ``(rel, is_dir)`` pairs (any order), the paths a copy with these
    patterns keeps: matches, plus the parent directories of kept paths."""
    flt = PathFilter(include, exclude)
    items = sorted(paths, key=lambda p: p[0].split("/"))
    states: dict[str, FilterState] = {"": ROOT}
    kept: set[str] = set()
    for rel, is_dir in items:
        parent = rel.rsplit("/", 1)[0] if "/" in rel else ""
        keep, state = flt.check(rel, is_dir, states.get(parent, ROOT))
        if is_dir:
            states[rel] = state
        if keep:
            kept.add(rel)
    for rel in list(kept):
        while "/" in rel:
            rel = rel.rsplit("/", 1)[0]
            if rel in kept:
                break
            kept.add(rel)
    return kept


def walk_host(root: Path, flt: PathFilter) -> list[tuple[str, str, Path]]:
    """The kept paths of a host directory: ``(rel, kind, full path)`` with kind
    ``file``, ``dir`` or ``symlink`` (symlinks are not followed), parents first."""
    out: list[tuple[str, str, Path]] = []
    pending: dict[str, tuple[str, str, Path]] = {}  # unkept dirs, until a child is kept

    def emit(rel: str, kind: str, full: Path) -> None:
        parts = rel.split("/")
        for n in range(1, len(parts)):
            anc = "/".join(parts[:n])
            if anc in pending:
                out.append(pending.pop(anc))
        out.append((rel, kind, full))

    def visit(rel_dir: str, full_dir: Path, state: FilterState) -> None:
        try:
            names = sorted(os.listdir(full_dir))
        except OSError:
            return
        for name in names:
            rel = f"{rel_dir}/{name}" if rel_dir else name
            full = full_dir / name
            if full.is_symlink():
                kind = "symlink"
            elif full.is_dir():
                kind = "dir"
            elif full.is_file():
                kind = "file"
            else:
                continue  # sockets, fifos, devices
            keep, child = flt.check(rel, kind == "dir", state)
            if kind != "dir":
                if keep:
                    emit(rel, kind, full)
                continue
            if keep:
                emit(rel, kind, full)
            elif flt.prune(rel, child):
                continue
            else:
                pending[rel] = (rel, kind, full)
            visit(rel, full, child)
            pending.pop(rel, None)

    visit("", root, ROOT)
    return out
