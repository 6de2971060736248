"""Which directories of a local Go module hold a program (``package main``).

``go build -o out ./dir`` on a library package does not fail: it writes a package
archive, which an image would then carry as its "binary". Many Go repositories
keep a library at the root and their programs under ``cmd/``, so building the
default ``main_package`` ('.') of such a repository is a likely mistake; it is
caught here, before any engine work, with the main packages the module does have.

A package is what ``go build`` compiles of a directory for one platform: its
non-test Go files whose build constraints hold (``tasks/goconstraints.py``: file
name suffixes, ``//go:build``, cgo off), so a directory of ``//go:build none``
generators beside a library is that library, and one whose only program file
is ``main_windows.go`` is no package at all on linux.

Only a sure answer refuses a build: a directory whose every file Go compiles
for a platform was read and names another package, a directory whose every Go
file the constraints surely leave out (``build constraints exclude all Go
files``), a directory that is missing or holds no Go file at all (the common
case: a module with nothing at its root but ``cmd/<name>``, built with the
default '.'), or one inside a nested module that no go.work joins. A file whose
package clause cannot be found, or whose constraint names a tag only the builder
knows (``go1.N``), makes the answer "unknown", and the build goes on; the
compile stage checks what ``go build`` wrote in any case (:func:`is_program`).

The ``main_package`` parameter's own grammar is here too
(:func:`main_package_syntax`): a directory of the module or an import path.
"""

from __future__ import annotations

import os
import posixpath
import re
from collections import deque
from collections.abc import Iterator, Sequence
from itertools import islice
from pathlib import Path

from tasks.goconstraints import FileInfo, Target, go_files, read_go_file
from tasks.imageref import show

_PATH_ELEMENT = re.compile(r"[A-Za-z0-9_.~+-]+")
SCAN_DEPTH = 3
SCAN_DIRS = 2000
SKIP_DIRS = {"vendor", "testdata", "node_modules"}
ELF_MAGIC = b"\x7fELF"
LINUX_AMD64 = Target("linux", "amd64")  # what a check without the build's platforms assumes
_WINDOWS_RESERVED = {"CON", "PRN", "AUX", "NUL"} | {
    f"{d}{n}" for d in ("COM", "LPT") for n in "123456789"
}
_MAJOR_VERSION = re.compile(r"v(?:[2-9]|[1-9][0-9]+)")  # v2 and up; v0 and v1 are not


class WildcardPackage(ValueError):
    """A package pattern with ``...``: each program is named on its own, because
    each gets a file of its own in the image (and the first, the entrypoint)."""

    def __init__(self, value: str) -> None:
        self.value = value
        super().__init__(f"{show(value)} is a wildcard; name the one main package to build")


def wildcard_matches(module: Path, pattern: str, own: str | None) -> list[str]:
    """The main packages of the module (:func:`main_packages`, as './dir') that
    ``pattern`` matches as Go matches one (cmd/go ``search.MatchPattern``: ``...``
    is any string, and ``x/...`` matches ``x`` too), for a refusal to name them;
    a pattern over the module's import path (``own``) is read as its directory."""
    if own and (pattern == own or pattern.startswith(own + "/")):
        pattern = "." + pattern[len(own) :]
    elif not pattern.startswith("."):
        pattern = "./" + pattern
    expr = re.escape(pattern).replace(re.escape("..."), ".*")
    if expr.endswith("/.*"):
        expr = expr[: -len("/.*")] + "(/.*)?"
    rule = re.compile(expr)
    return [p for p in main_packages(module, limit=SCAN_DIRS) if rule.fullmatch(p)]


def main_package_syntax(value: str) -> str:
    """A ``main_package`` as ``go build`` should get it: a path becomes './path',
    because Go reads a bare 'cmd/x' as a standard-library path; an import path
    (its first element has a dot, as ko and ``go install`` take them) stays one."""
    if not value:
        raise ValueError("must not be empty (use '.' for the module root)")
    if value.startswith("/") or "\\" in value or re.match(r"[A-Za-z]:", value):
        raise ValueError(f"{show(value)} must be a path relative to the module root")
    if any(ch.isspace() for ch in value):
        raise ValueError(f"{show(value)} must not contain whitespace")
    segments = value.split("/")
    if ".." in segments:
        raise ValueError(f"{show(value)} must not contain '..' (stay inside the module)")
    if "..." in value:
        raise WildcardPackage(value)
    relative = segments[0] == "."
    if relative:
        segments = segments[1:]
    if segments and segments[-1] == "":
        segments = segments[:-1]
    for segment in segments:
        if segment == "." or not _PATH_ELEMENT.fullmatch(segment):
            raise ValueError(f"{show(value)} is not a valid Go package path")
        if problem := element_problem(segment):
            raise ValueError(
                f"{show(value)} is not a valid Go import path ({problem}), which go build "
                "refuses; rename that directory"
            )
    if not relative and segments and "." in segments[0].lstrip("."):
        return "/".join(segments)  # an import path: example.com/app/cmd/server
    return "./" + "/".join(segments) if segments else "."


def element_problem(element: str) -> str | None:
    """Why Go refuses ``element`` (characters already checked) in an import path,
    or None: a trailing dot, a name Windows reserves (before its first dot, any
    case) or a Windows short name (``~`` and digits at its end). The go command
    checks every package's import path so (golang.org/x/mod/module ``checkElem``,
    import paths) and fails ``go build ./cmd/aux`` with ``malformed import
    path``, even on Linux."""
    if element.endswith("."):
        return f"{element!r} ends with a dot"
    short = element.split(".", 1)[0]
    if short.upper() in _WINDOWS_RESERVED:
        return f"{short!r} is a name Windows reserves"
    _, tilde, digits = short.rpartition("~")
    if tilde and digits and digits.isascii() and digits.isdigit():
        return f"{element!r} ends like a Windows short name (a tilde and digits)"
    return None


def exec_name(package: str, module: str | None = None) -> str:
    """The file name ``go build`` and ``go install`` give a package's program: its
    last path element, or the one before a major-version suffix (``example.com/
    tool/v2`` is ``tool``; cmd/go/internal/load ``DefaultExecName``). The go
    command applies it to the import path, so a relative package is read inside
    ``module`` (its module path) where that is known: ``./v2`` of
    ``example.com/app`` is ``app``, and ``./cmd/v2`` is ``cmd`` either way."""
    if module and (package == "." or package.startswith("./")):
        package = module + package[1:]
    elements = [e for e in package.split("/") if e not in ("", ".")]
    if len(elements) > 1 and _MAJOR_VERSION.fullmatch(elements[-1]):
        return elements[-2]
    return elements[-1] if elements else ""


def package_name(path: Path) -> str | None:
    """The package a Go file declares, None when the clause cannot be found."""
    return read_go_file(path).package


def go_files_in(directory: Path) -> list[FileInfo] | None:
    """What each non-test Go file of a directory says (:func:`read_go_file`);
    None for a directory that cannot be listed."""
    try:
        names = [e.name for e in os.scandir(directory) if e.is_file()]
    except OSError:
        return None
    return [read_go_file(directory / name) for name in go_files(names)]


def package_for(files: list[FileInfo], target: Target) -> set[str | None] | None:
    """The package names of the files Go may compile for ``target`` (None among
    them for a clause that cannot be read); None when the constraints surely
    leave every file out."""
    kept = [f for f in files if f.builds_for(target) is not False]
    return {f.package for f in kept} if kept else None


def scanned_dirs(root: Path, *, one_module: bool = False) -> Iterator[Path]:
    """The directories under ``root`` (itself first), nearest first: what Go's
    ``./...`` would walk (no hidden, ``_``, testdata or vendor directories), and no
    node_modules either, within three levels and 2,000 directories, no symlinks
    followed. ``one_module`` stops, as Go does, at a directory with a go.mod of
    its own: a nested module, not a package of this one."""
    queue = deque([(root, 0)])
    visited = 0
    while queue and visited < SCAN_DIRS:
        directory, depth = queue.popleft()
        if one_module and directory != root and (directory / "go.mod").is_file():
            continue
        visited += 1
        yield directory
        if depth >= SCAN_DEPTH:
            continue
        try:
            subdirs = sorted(
                e.path
                for e in os.scandir(directory)
                if e.is_dir(follow_symlinks=False)
                and e.name not in SKIP_DIRS
                and not e.name.startswith((".", "_"))
            )
        except OSError:
            continue
        queue.extend((Path(d), depth + 1) for d in subdirs)


def main_packages(module: Path, target: Target = LINUX_AMD64, limit: int = 5) -> list[str]:
    """Up to ``limit`` main packages of the module (``./cmd/x``), nearest first:
    directories Go may build as ``package main`` for ``target``, under a path Go
    takes as an import path."""

    def is_main(directory: Path) -> bool:
        rel = directory.relative_to(module).parts
        if any(not _PATH_ELEMENT.fullmatch(e) or element_problem(e) for e in rel):
            return False
        files = go_files_in(directory)
        names = package_for(files, target) if files else None
        return names is not None and "main" in names

    found = (d for d in scanned_dirs(module, one_module=True) if is_main(d))
    rels = (d.relative_to(module).as_posix() for d in found)
    return ["." if rel == "." else f"./{rel}" for rel in islice(rels, limit)]


def nested_module(module: Path, main_package: str) -> Path | None:
    """The directory of the nearest go.mod between ``main_package`` and the module
    root, if any: Go builds that package only in a workspace that uses it."""
    directory = (module / main_package).resolve()
    root = module.resolve()
    while directory != root and root in directory.parents:
        if (directory / "go.mod").is_file():
            return directory
        directory = directory.parent
    return None


def check_main_dir(
    module: Path, main_package: str, *, workspace: bool = False, module_dir: str = "."
) -> None:
    """Raise ValueError when ``main_package`` is no directory of the module: it
    is missing, or sits in a nested module (with its own go.mod) and no go.work
    (``workspace``) joins the two, where Go says ``main module does not contain
    package``."""
    directory = module / main_package
    if not directory.is_dir():
        raise ValueError(f"{main_package!r} is not a directory of the module{_hint(module)}")
    nested = nested_module(module, main_package)
    if nested is not None and not workspace:
        rel = nested.relative_to(module.resolve()).as_posix()
        inner = (module / main_package).resolve().relative_to(nested).as_posix()
        raise ValueError(
            f"{main_package!r} is in another module ({rel}/go.mod), which go build does not "
            f"build from this one; set module_dir to {posixpath.normpath(f'{module_dir}/{rel}')!r}"
            f" and main_package to {'.' if inner == '.' else './' + inner!r}{_hint(module)}"
        )


def check_main_package(
    module: Path, main_package: str, targets: Sequence[Target] = (LINUX_AMD64,)
) -> None:
    """Raise ValueError when ``main_package`` surely holds no program for one of
    ``targets``: a library (``go build`` would write its archive without a word),
    a directory whose Go files the build constraints all leave out, or one that
    holds no Go file (``go build`` would fail, but only once the engine runs it).
    The message names the module's main packages, so the fix is in it."""
    check_main_dir(module, main_package, workspace=True)
    files = go_files_in(module / main_package)
    if files is None:
        return
    if not files:
        tests_only = any(p.name.endswith("_test.go") for p in (module / main_package).glob("*.go"))
        what = "only Go test files" if tests_only else "no Go files"
        raise ValueError(f"{main_package!r} holds {what}{_hint(module, target=targets[0])}")
    for target in targets:
        names = package_for(files, target)
        if names is None:
            raise ValueError(
                f"build constraints exclude all Go files in {main_package!r} for "
                f"{target.platform()} ({_why_excluded(files, target)})"
                f"{_hint(module, main_package, target)}"
            )
        if "main" in names or None in names:
            continue
        found = ", ".join(sorted(n for n in names if n))
        raise ValueError(
            f"{main_package!r} is package {found}, not a main package"
            f"{_hint(module, main_package, target)}"
        )


def _why_excluded(files: list[FileInfo], target: Target) -> str:
    """What leaves the first files out, in go's terms, for the message."""
    reasons = [f"{f.name}: {f.excluded_by(target)}" for f in files[:3]]
    return "; ".join(reasons) + ("; …" if len(files) > 3 else "")


def _hint(module: Path, main_package: str = "", target: Target = LINUX_AMD64) -> str:
    others = [p for p in main_packages(module, target) if p != main_package]
    if not others:
        return " (the module has no main package within three levels)"
    return f"; main packages in this module: {', '.join(others)}"


def is_program(path: Path) -> bool:
    """Whether ``go build`` wrote an executable (ELF, for the Linux targets) rather
    than a package archive."""
    with open(path, "rb") as fh:
        return fh.read(4) == ELF_MAGIC
