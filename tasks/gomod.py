"""What a local module's go.mod and go.work files say, read before any engine work.

The files are the module's go.mod and the go.work Go would use: the nearest one
from the module's directory up to the source root (the builder sees the source
at /src, so Go's search for a workspace ends there; :func:`module_files`). Two
things are read from them: the ``go`` lines (``tasks/goversion.py`` holds them
against the builder image) and the directories they point at, which must travel
with the source.

The engine receives the source directory and nothing beside it. A monorepo's
service often replaces a sibling module with a path (``replace example.com/lib
=> ../lib``) or sits in a workspace that ``use``s one; built with ``source`` set
to the service alone, such a build opens a session, uploads, and only then
fails in ``go mod download`` (``reading ../lib/go.mod: open /lib/go.mod: no such
file or directory``). For a local source the files say so before any engine
work, and the fix is known: a source that holds both, with ``module_dir``
pointing at the service.

Only a sure answer refuses: a ``use``, or a directory replacement (Go's
``modfile.IsDirectoryPath``: ``./``, ``../`` or absolute) of a module the go.mod
requires (``go mod download`` reads every one of those), that resolves outside
the source, or inside it but with no go.mod (which Go requires of both), or an
absolute path, which names this machine's file system, not the builder's. The
replacement read is the one Go applies: a go.work's over the go.mod's, a rule
for the required version over one for every version; a vendored module (built
with ``-mod=vendor``, no download) reads none. The grammar read is go.mod's own
(``golang.org/x/mod/modfile``, read.go's lexer): lines end at ``\n`` only,
``//`` comments (also glued to a word), ``(`` a token of its own, blocks of any
directive, quoted paths with Go's escapes. No PyPI package reads go.mod files
and is kept up; this is the part of it that matters here, checked against ``go
mod edit -json`` in the tests.
"""

from __future__ import annotations

import ast
import os
import posixpath
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

from tasks.gopackages import scanned_dirs
from tasks.imageref import show

_PUNCTUATION = "()[]{},"


def _unquote(token: str) -> str:
    """A quoted token's text, as ``strconv.Unquote`` reads it: a raw string as is;
    an interpreted one with its escapes (Go's are Python's, for what a path holds)."""
    inner = token[1:-1] if len(token) > 1 and token[-1] == token[0] else token[1:]
    if token[0] == "`":
        return inner
    try:
        value = ast.literal_eval(f'"{inner}"')
    except (SyntaxError, ValueError):
        return inner
    return value if isinstance(value, str) else inner


def _tokens(line: str) -> list[str]:
    """One line's tokens as ``modfile``'s lexer reads them (read.go ``readToken``):
    spaces, tabs and carriage returns separate them; each of ``()[]{},`` is a token
    of its own (so ``replace(`` opens a block); a quoted string is one token; and
    ``//`` starts a comment anywhere, also inside a word (``../lib// old``)."""
    out: list[str] = []
    i, n = 0, len(line)
    while i < n:
        c = line[i]
        if c.isspace() or not c.isprintable():
            i += 1
        elif line.startswith("//", i):
            break
        elif c in _PUNCTUATION:
            out.append(c)
            i += 1
        elif c in '"`':
            j = i + 1
            while j < n and line[j] != c:
                j += 2 if c == '"' and line[j] == "\\" else 1
            out.append(_unquote(line[i : j + 1]))
            i = j + 1
        else:
            j = i
            while j < n and not (
                line[j].isspace()
                or not line[j].isprintable()
                or line[j] in _PUNCTUATION
                or line.startswith("//", j)
            ):
                j += 1
            out.append(line[i:j])
            i = j
    return out


def directives(text: str, verb: str) -> Iterator[list[str]]:
    """The arguments of each ``verb`` directive, one-line or in a ``verb ( … )``
    block. Lines end at ``\\n`` only, as Go reads them (not at the other breaks
    ``str.splitlines`` knows, which a comment may hold), and the lines of another
    directive's block are never taken for a ``verb`` of its own."""
    block: str | None = None
    for line in text.split("\n"):
        toks = _tokens(line)
        if not toks:
            continue
        if block is not None:
            if toks[0] == ")":
                block = None
            elif block == verb:
                yield toks
        elif toks[-1] == "(":
            block = toks[0]
        elif toks[0] == verb and len(toks) > 1 and toks[1:] != ["(", ")"]:
            yield toks[1:]


def _read(path: Path) -> str:
    """A go.mod or go.work file's text; '' for one that is missing or unreadable,
    which has no directives to act on."""
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def _first_argument(path: Path, verb: str) -> str | None:
    for args in directives(_read(path), verb):
        return args[0]
    return None


def _is_absolute(path: str) -> bool:
    """Absolute on Unix or Windows, as ``modfile.IsDirectoryPath`` reads paths."""
    return path.startswith(("/", "\\")) or (
        len(path) >= 2 and path[0].isascii() and path[0].isalpha() and path[1] == ":"
    )


def is_directory_path(path: str) -> bool:
    """``modfile.IsDirectoryPath``: a replacement that names a directory, not a module."""
    return (
        path in (".", "..") or path.startswith(("./", ".\\", "../", "..\\")) or _is_absolute(path)
    )


def requirements(go_mod: Path) -> set[tuple[str, str]]:
    """(module path, version) of each ``require`` of a go.mod."""
    return {(args[0], args[1]) for args in directives(_read(go_mod), "require") if len(args) >= 2}


@dataclass(frozen=True)
class Replacement:
    """One ``replace`` line: the module path and version it applies to ('' for
    every version) and what it points at, as written (a directory, or a module
    path and version)."""

    file: Path
    path: str
    version: str
    new: tuple[str, ...]


def replacements(file: Path) -> list[Replacement]:
    found = []
    for args in directives(_read(file), "replace"):
        if "=>" in args:
            old, new = args[: args.index("=>")], args[args.index("=>") + 1 :]
            if old:
                found.append(Replacement(file, old[0], old[1] if len(old) > 1 else "", tuple(new)))
    return found


def _replacement_for(path: str, version: str, rules: list[Replacement]) -> Replacement | None:
    """The rule Go applies to one module version: the one for that version over
    one for every version."""
    exact = [r for r in rules if r.path == path and r.version == version]
    every = [r for r in rules if r.path == path and not r.version]
    return (exact or every or [None])[-1]


def local_dirs(
    files: Sequence[Path], required: set[tuple[str, str]]
) -> Iterator[tuple[Path, str, str]]:
    """(file, what, directory as written) for each directory the build will read.

    ``files`` are :func:`module_files`: the go.mod, then the go.work if one
    applies. For each module in ``required`` (the go.mod's requirements: Go never
    reads the replacement of a module it does not need, so a stale one is
    harmless), the replacement Go applies, when it is a directory: a go.work's
    replaces win over the go.mod's (Go's workspace rule), and in each file a rule
    for the required version over one for every version. Then a go.work's ``use``
    lines."""
    mod_rules = replacements(files[0]) if files else []
    work_rules = replacements(files[1]) if len(files) > 1 else []
    for path, version in sorted(required):
        rule = _replacement_for(path, version, work_rules) or _replacement_for(
            path, version, mod_rules
        )
        if rule is not None and len(rule.new) == 1 and is_directory_path(rule.new[0]):
            yield rule.file, f"replaces {path} with", rule.new[0]
    for file in files[1:]:
        for written in uses(file):
            yield file, "uses", written


def uses(work: Path) -> list[str]:
    """The directories a go.work's ``use`` lines name, as written."""
    return [args[0] for args in directives(_read(work), "use") if len(args) == 1]


Sent = Callable[[str], bool]  # whether the engine gets a file (a source-relative path)


def module_files(source: Path, module_dir: str, sent: Sent | None = None) -> list[Path]:
    """The module's go.mod, and the go.work Go would use for it
    (:func:`nearest_go_work`), if any; [] for a module that resolves outside the
    source. ``sent`` says which go.work files the engine gets: one that git ignores
    (Go advises against committing a go.work) or ``.dockerignore`` leaves out is
    not there, and Go looks further up."""
    root = source.resolve()
    module = (root / module_dir).resolve()
    if module != root and root not in module.parents:
        return []

    def present(rel: str) -> bool:
        return (root / rel).is_file() and (sent is None or sent(rel))

    work = nearest_go_work(module.relative_to(root).as_posix(), present)
    return [module / "go.mod"] + ([root / work] if work is not None else [])


def go_work_candidates(module_dir: str) -> list[str]:
    """Where Go looks for a go.work for the module, nearest first, as paths
    relative to the source: its directory and each one above it, up to the source's
    root (the builder's /src, where the search ends)."""
    module = posixpath.normpath(module_dir or ".")
    found = []
    while True:
        found.append(posixpath.join(module, "go.work") if module != "." else "go.work")
        if module == ".":
            return found
        module = posixpath.dirname(module) or "."


def nearest_go_work(module_dir: str, present: Sent) -> str | None:
    """The go.work Go reads for the module (source-relative), None in module mode:
    the nearest of :func:`go_work_candidates` that ``present`` says is there (on
    disk and sent, in the files sent, or in the engine)."""
    return next((c for c in go_work_candidates(module_dir) if present(c)), None)


def vendor_manifest(module_dir: str, workspace: str | None) -> str:
    """The ``vendor/modules.txt`` that makes ``go build`` build from vendor/ by
    default: the module's own in module mode; in a workspace (``workspace``: its
    go.work), the workspace's, beside the go.work (``go work vendor``). A module's
    own vendor/ does not count there: Go would refuse it as inconsistent."""
    base = posixpath.dirname(workspace) if workspace is not None else module_dir
    return posixpath.normpath(posixpath.join(base or ".", "vendor", "modules.txt"))


def go_line(path: Path) -> str | None:
    """The version on a go.mod or go.work file's ``go`` line, if it has one."""
    return _first_argument(path, "go")


def module_path(module: Path) -> str | None:
    """The module path on a go.mod's ``module`` line, if it has one."""
    return _first_argument(module / "go.mod", "module")


@dataclass(frozen=True)
class LocalModule:
    """A directory the build reads as a module, as its go.mod or go.work names it."""

    said: str  # what the go.mod or go.work naming it says, its path relative to the source
    target: Path | None  # where it resolves; None for an absolute path


def local_modules(
    source: Path, module_dir: str, sent: Sent | None = None, vendored: bool | None = None
) -> Iterator[LocalModule]:
    """Each directory the module's go.mod and go.work make the build read
    (:func:`local_dirs`; ``sent`` as :func:`module_files` takes it). ``vendored``:
    whether the build has ``vendor/modules.txt`` (Go then builds with -mod=vendor
    and reads no replacement, as the vendored copy is the module); by default,
    whether the disk has it."""
    root = source.resolve()
    module = (root / module_dir).resolve()
    files = module_files(source, module_dir, sent)
    required = requirements(module / "go.mod")
    if vendored is None:
        vendored = (module / "vendor" / "modules.txt").is_file()
    if len(files) == 1 and vendored:
        required = set()
    for file, what, written in local_dirs(files, required):
        target = None
        if not _is_absolute(written):
            target = Path(os.path.normpath(file.parent / written.replace("\\", "/")))
        said = f"{file.relative_to(root).as_posix()} {what} {written}"
        yield LocalModule(said, target)


def check_local_dirs(source: Path, module_dir: str, sent: Sent | None = None) -> None:
    """Refuse a module whose go.mod or go.work names a directory the engine will
    not have (``sent`` as :func:`module_files` takes it)."""
    root = source.resolve()
    module = (root / module_dir).resolve()
    for local in local_modules(source, module_dir, sent):
        if local.target is None:
            raise ValueError(
                f"{local.said}, an absolute path of this machine, which the "
                "engine does not have; use a relative path inside the source"
            )
        target = local.target
        if target != root and root not in target.parents:
            common = Path(os.path.commonpath([root, target]))
            inner = module.relative_to(common).as_posix() if module != common else "."
            raise ValueError(
                f"{local.said}, outside source {show(str(source))}, and the "
                f"engine gets only the source; set source to {show(str(common))} and "
                f"module_dir to {inner!r}"
            )
        if not (target / "go.mod").is_file():
            raise ValueError(f"{local.said}, which has no go.mod")


def needed_modules(
    source: Path, module_dir: str, sent: Sent, vendored: bool
) -> list[tuple[str, str]]:
    """(what the go.mod or go.work naming it says, the go.mod Go reads there, relative
    to the source) for each directory of the source the build reads as a module.
    :func:`check_local_dirs` has refused those outside the source or without a
    go.mod; whether the engine gets each go.mod is the build context's to say
    (``tasks/source.py``), as are ``sent`` and ``vendored`` (a vendor/modules.txt
    sent)."""
    root = source.resolve()
    return [
        (local.said, (local.target / "go.mod").relative_to(root).as_posix())
        for local in local_modules(source, module_dir, sent, vendored)
        if local.target is not None and root in (local.target / "go.mod").parents
    ]


def find_modules(root: Path, limit: int = 5) -> list[str]:
    """Up to ``limit`` directories under ``root`` that hold a go.mod, nearest first
    (as ``module_dir`` values), for the hint of a source with none at its root;
    the directories looked at are :func:`tasks.gopackages.scanned_dirs`."""
    found = (d for d in scanned_dirs(root) if d != root and (d / "go.mod").is_file())
    return [d.relative_to(root).as_posix() for d in islice(found, limit)]
