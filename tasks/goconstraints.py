"""Which Go files a build for one platform compiles, decided as ``go/build`` does.

A directory's files take part in ``go build`` only if their build constraints
hold for the target: the file name (``_windows.go``, ``_linux_arm64.go``), the
``//go:build`` line (or, without one, the ``// +build`` lines of the header's
first paragraphs), and cgo: a file that imports ``"C"`` is left out, since the
build is static (``CGO_ENABLED=0``). Go decides this per platform, so a
package can be a program on linux/amd64 and nothing at all on linux/arm64.

The answer here has three values, because not every tag is known before the
engine runs: ``True`` (Go compiles the file), ``False`` (it surely does not)
and ``None`` (it depends on what only the builder knows: the ``go1.N`` release
tags of its Go, ``goexperiment.*``, the ``amd64.v2``-style feature levels, and
any tag when ``GOFLAGS`` sets ``-tags`` itself). Every other tag is false unless
``build_tags`` names it, as for Go. The callers refuse a build only on a sure
``False``.

The rules are those of ``go/build`` (build.go ``shouldBuild``, ``parseFileHeader``,
``matchTag``, ``goodOSArchFile``; syslist.go for the known names) and
``go/build/constraint`` for the expression grammar. No PyPI package evaluates Go
build constraints; the tests hold this module against ``go list``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "FileInfo",
    "Target",
    "go_files",
    "read_go_file",
    "targets",
]

KNOWN_OS = frozenset(
    [
        "aix",
        "android",
        "darwin",
        "dragonfly",
        "freebsd",
        "hurd",
        "illumos",
        "ios",
        "js",
        "linux",
        "nacl",
        "netbsd",
        "openbsd",
        "plan9",
        "solaris",
        "wasip1",
        "windows",
        "zos",
    ]
)
KNOWN_ARCH = frozenset(
    [
        "386",
        "amd64",
        "amd64p32",
        "arm",
        "armbe",
        "arm64",
        "arm64be",
        "loong64",
        "mips",
        "mipsle",
        "mips64",
        "mips64le",
        "mips64p32",
        "mips64p32le",
        "ppc",
        "ppc64",
        "ppc64le",
        "riscv",
        "riscv64",
        "s390",
        "s390x",
        "sparc",
        "sparc64",
        "wasm",
    ]
)
UNIX_OS = frozenset(
    [
        "aix",
        "android",
        "darwin",
        "dragonfly",
        "freebsd",
        "hurd",
        "illumos",
        "ios",
        "linux",
        "netbsd",
        "openbsd",
        "solaris",
    ]
)
_TAG = re.compile(r"[A-Za-z0-9_.]+")
# Tags whose value only the builder's Go knows: its release (go1.N) and its
# experiments; and the architecture feature tags (amd64.v3, arm64.v8.1, arm.7),
# any tag named after an architecture with a dot (below).
_BUILDER_TAG = re.compile(r"go1\.\d+|goexperiment\..+")
_HEAD_LIMITS = (64 << 10, 1 << 20)  # a package clause and imports come first
Truth = bool | None


@dataclass(frozen=True)
class Target:
    """What a file is built for: one platform, the build's tags, cgo off."""

    goos: str
    goarch: str
    tags: frozenset[str] = frozenset()
    tags_unknown: bool = False  # GOFLAGS sets -tags: any other tag may be on

    def platform(self) -> str:
        return f"{self.goos}/{self.goarch}"

    def tag(self, name: str) -> Truth:
        """``matchTag``: whether a tag holds for this build."""
        if name in (self.goos, self.goarch, "gc") or name in self.tags:
            return True
        if name == "unix" and self.goos in UNIX_OS:
            return True
        if (self.goos, name) in (("android", "linux"), ("illumos", "solaris"), ("ios", "darwin")):
            return True
        if self.tags_unknown or _BUILDER_TAG.fullmatch(name) or _feature_tag(name):
            return None  # GOFLAGS' -tags may name any tag, even cgo or windows
        return False  # cgo too: CGO_ENABLED=0


def _feature_tag(name: str) -> bool:
    """An architecture's feature level (``amd64.v3``, ``arm.7``): set by GOAMD64,
    GOARM and the like, which the builder decides."""
    arch, dot, _ = name.partition(".")
    return bool(dot) and arch in KNOWN_ARCH


def _and(a: Truth, b: Truth) -> Truth:
    if a is False or b is False:
        return False
    return None if a is None or b is None else True


def _or(a: Truth, b: Truth) -> Truth:
    if a is True or b is True:
        return True
    return None if a is None or b is None else False


def _not(a: Truth) -> Truth:
    return None if a is None else not a


class _Expr:
    """A ``//go:build`` expression (go/build/constraint ``exprParser``), evaluated
    against a target as it is parsed; a syntax error raises ValueError."""

    def __init__(self, text: str, target: Target) -> None:
        self.toks = re.findall(r"\|\||&&|[!()]|[A-Za-z0-9_.]+|\S", text)
        self.pos = 0
        self.target = target

    def value(self) -> Truth:
        x = self._or()
        if self.pos != len(self.toks):
            raise ValueError(f"unexpected {self.toks[self.pos]!r}")
        return x

    def _peek(self) -> str:
        return self.toks[self.pos] if self.pos < len(self.toks) else ""

    def _or(self) -> Truth:
        x = self._and()
        while self._peek() == "||":
            self.pos += 1
            x = _or(x, self._and())
        return x

    def _and(self) -> Truth:
        x = self._not()
        while self._peek() == "&&":
            self.pos += 1
            x = _and(x, self._not())
        return x

    def _not(self) -> Truth:
        tok = self._peek()
        self.pos += 1
        if tok == "!":
            return _not(self._not())
        if tok == "(":
            x = self._or()
            if self._peek() != ")":
                raise ValueError("missing )")
            self.pos += 1
            return x
        if not _TAG.fullmatch(tok):
            raise ValueError(f"unexpected {tok!r}")
        return self.target.tag(tok)


def plus_build(line: str, target: Target) -> Truth:
    """One ``// +build`` line: space-separated options OR, comma-separated terms
    AND, ``!`` negates one tag."""
    options = line.strip()[2:].strip().removeprefix("+build").split()
    if not options:
        return target.tag("ignore")  # constraint.parsePlusBuildExpr: none is "ignore"
    result: Truth = False
    for option in options:
        value: Truth = True
        for term in option.split(","):
            neg = term.startswith("!")
            name = term[1:] if neg else term
            if not _TAG.fullmatch(name):
                return None  # go/build ignores a line it cannot parse; so do we
            t = target.tag(name)
            value = _and(value, _not(t) if neg else t)
        result = _or(result, value)
    return result


def name_matches(file_name: str, target: Target) -> Truth:
    """``goodOSArchFile``: ``x_GOOS.go``, ``x_GOARCH.go``, ``x_GOOS_GOARCH.go``
    (``_test`` aside); the part before the first ``_`` never counts."""
    stem = file_name.split(".", 1)[0]
    if "_" not in stem:
        return True
    parts = stem[stem.index("_") :].split("_")
    if parts[-1] == "test":
        parts = parts[:-1]
    if len(parts) >= 2 and parts[-2] in KNOWN_OS and parts[-1] in KNOWN_ARCH:
        return _and(target.tag(parts[-2]), target.tag(parts[-1]))
    if parts and (parts[-1] in KNOWN_OS or parts[-1] in KNOWN_ARCH):
        return target.tag(parts[-1])
    return True


@dataclass
class FileInfo:
    """What a Go file's header says: its package (None where it cannot be read),
    its ``//go:build`` line, the ``// +build`` lines Go would read, and whether it
    imports ``"C"`` (None where the imports cannot be read)."""

    name: str
    package: str | None
    go_build: str | None = None
    plus_build: list[str] = field(default_factory=list)
    imports_c: bool | None = False
    bad_constraint: bool = False

    def excluded_by(self, target: Target) -> str:
        """Go's reason for leaving this file out of ``target``'s build, for a message."""
        if name_matches(self.name, target) is False:
            return "its file name"
        if self.go_build is not None:
            try:
                if _Expr(self.go_build, target).value() is False:
                    return f"//go:build {self.go_build}"
            except ValueError:
                pass
        elif any(plus_build(line, target) is False for line in self.plus_build):
            return "its // +build lines"
        if self.imports_c:
            return 'imports "C", and cgo is off (CGO_ENABLED=0)'
        return "kept"

    def builds_for(self, target: Target) -> Truth:
        """Whether Go compiles this file for ``target``."""
        if self.bad_constraint:
            return None  # go build fails on it: left to go build's own words
        ok = name_matches(self.name, target)
        if self.go_build is not None:
            try:
                ok = _and(ok, _Expr(self.go_build, target).value())
            except ValueError:
                return None
        else:
            for line in self.plus_build:
                ok = _and(ok, plus_build(line, target))
        if self.imports_c is None:
            return _and(ok, None)
        return _and(ok, not self.imports_c)


def _skip_space_and_comments(text: str, at: int) -> int | None:
    """The index of the next token, past white space and comments; None inside an
    unclosed block comment."""
    while True:
        while at < len(text) and text[at].isspace():
            at += 1
        if text.startswith("//", at):
            end = text.find("\n", at)
            at = len(text) if end < 0 else end + 1
        elif text.startswith("/*", at):
            end = text.find("*/", at + 2)
            if end < 0:
                return None
            at = end + 2
        else:
            return at


def _header(text: str) -> tuple[list[str], list[str], int]:
    """``parseFileHeader``: the ``//go:build`` lines (Go allows one), the ``//
    +build`` lines before the last blank line of the leading comments, and the
    offset of the first line of code."""
    go_build: list[str] = []
    plus: list[tuple[int, str]] = []
    end_blank = 0  # offset just past the last blank line of the header's // lines
    ended = False  # a line not starting with // was seen: blank lines count no more
    in_star = False
    offset = 0
    for raw in text.split("\n"):
        start, offset = offset, offset + len(raw) + 1
        line = raw.strip()
        if not line and not ended:
            end_blank = offset
            continue
        if not line.startswith("//"):
            ended = True
        if not in_star and re.match(r"//go:build(?:[ \t]|$)", line):
            go_build.append(line[len("//go:build") :].strip())
        if not in_star and re.match(r"//\s*\+build(?:\s|$)", line):
            plus.append((start, line))
        rest = line
        while rest:
            if in_star:
                i = rest.find("*/")
                if i < 0:
                    break
                in_star, rest = False, rest[i + 2 :].strip()
            elif rest.startswith("//"):
                break
            elif rest.startswith("/*"):
                in_star, rest = True, rest[2:].strip()
            else:
                return go_build, [text for at, text in plus if at < end_blank], start
    return go_build, [], len(text)


_PACKAGE = re.compile(r"package\b")
_IDENT = re.compile(r"[^\W\d]\w*")


def _imports_c(text: str, at: int) -> bool | None:
    """Whether the import declarations from ``at`` (just past the package clause)
    include ``"C"``; None where they cannot be read to their end."""
    while True:
        pos = _skip_space_and_comments(text, at)
        if pos is None:
            return None
        if text.startswith(";", pos):
            at = pos + 1
            continue
        if not re.match(r"import\b", text[pos:]):
            return False
        pos = _skip_space_and_comments(text, pos + len("import"))
        if pos is None:
            return None
        grouped = text.startswith("(", pos)
        at = pos + 1 if grouped else pos
        while True:
            pos = _skip_space_and_comments(text, at)
            if pos is None:
                return None
            if grouped and text.startswith(")", pos):
                at = pos + 1
                break
            if text.startswith(";", pos):
                at = pos + 1
                continue
            spec = re.compile(r'(?:[^\W\d]\w*\s+|[._]\s*)?("(?:[^"\\\n]|\\.)*"|`[^`]*`)').match(
                text, pos
            )
            if spec is None:
                return None
            if spec.group(1)[1:-1] == "C":
                return True
            at = spec.end()
            if not grouped:
                break


def read_go_file(path: Path) -> FileInfo:
    """A Go file's :class:`FileInfo`, from its first 64 KiB, or its first
    megabyte where the header and imports run past that (a long licence or
    cgo preamble)."""
    for limit in _HEAD_LIMITS:
        try:
            with open(path, "rb") as fh:
                data = fh.read(limit + 1)
        except OSError:
            return FileInfo(path.name, None, imports_c=None)
        info = _parse(path.name, data[:limit].decode("utf-8", errors="replace"))
        if len(data) <= limit or (info.package is not None and info.imports_c is not None):
            return info
    return info


def _parse(name: str, text: str) -> FileInfo:
    text = text.removeprefix("\ufeff")
    go_build, plus, code = _header(text)
    info = FileInfo(
        name,
        None,
        go_build[0] if go_build else None,
        plus,
        imports_c=None,
        bad_constraint=len(go_build) > 1,  # go/build: "multiple //go:build comments"
    )
    pos = _skip_space_and_comments(text, code)
    if pos is None or not _PACKAGE.match(text, pos):
        return info
    pos = _skip_space_and_comments(text, pos + len("package"))
    ident = _IDENT.match(text, pos) if pos is not None else None
    if ident is None:
        return info
    info.package = ident.group()
    info.imports_c = _imports_c(text, ident.end())
    return info


def go_files(names: Iterable[str]) -> list[str]:
    """The names Go reads as a package's non-test source files: ``.go``, not
    ``_test.go``, not starting with ``_`` or ``.`` (which Go ignores)."""
    return sorted(
        n
        for n in names
        if n.endswith(".go") and not n.endswith("_test.go") and not n.startswith(("_", "."))
    )


def targets(platforms: Iterable[str], build_tags: Iterable[str], goflags: str = "") -> list[Target]:
    """The :class:`Target` of each platform (``linux/arm/v7`` is GOARCH ``arm``) with
    the build's tags; a ``-tags`` in ``GOFLAGS`` (``go_env``) leaves other tags open."""
    tags = frozenset(build_tags)
    unknown = "-tags" in goflags
    out = []
    for platform in platforms:
        goos, goarch = platform.split("/")[:2]
        out.append(Target(goos, goarch, tags, unknown))
    return out
