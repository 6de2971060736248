"""Which programs a build makes, as the parameter model checks them.

``main_package`` names the image's entrypoint and ``extra_packages`` the programs
beside it in /usr/local/bin. Each is a package ``go build`` writes an executable
for: a directory of the module ('./cmd/x') or an import path. In a local module
the files say more before any engine work: an import path inside the module is
its directory, a directory that surely holds no program is refused
(``tasks/gopackages.py``: Go would write a library archive without a word), a
wildcard is refused naming the programs it matches, and two programs may not
land on one path in the image, where one would silently be missing.

A git source's tree is only the engine's to know: its packages get the grammar
and the one-path-each checks alone here, and the compile stage checks what
``go build`` wrote.
"""

from __future__ import annotations

import posixpath
from functools import cache
from pathlib import Path
from typing import NamedTuple

from tasks.context import would_send
from tasks.gomod import Sent, module_files, module_path
from tasks.gopackages import (
    SCAN_DEPTH,
    WildcardPackage,
    check_main_dir,
    exec_name,
    main_package_syntax,
    wildcard_matches,
)
from tasks.imageref import show
from tasks.sourcespec import is_git_url


class ModuleOnDisk(NamedTuple):
    """A local source's module as the checks that read its files take it (the
    arguments of ``tasks.gomod.module_files``)."""

    root: Path
    module_dir: str
    sent: Sent  # which go.work files the engine gets

    @property
    def directory(self) -> Path:
        return self.root / self.module_dir


def local_module(
    source: str | None, module_dir: str | None, use_gitignore: bool | None
) -> ModuleOnDisk | None:
    """The module of a local source whose two fields are valid; None for a git
    source (its tree is only known to the engine) or when either field failed."""
    if source is None or module_dir is None or is_git_url(source):
        return None
    root = Path(source).expanduser()
    return ModuleOnDisk(root, module_dir, go_work_sent(root, module_dir, use_gitignore))


def go_work_sent(source: Path, module_dir: str, use_gitignore: bool | None) -> Sent:
    """Whether the engine gets a go.work, as the build context will decide it
    (``tasks/context.would_send``): a go.work that git ignores (Go advises against
    committing one) is not read there, so neither its ``use`` lines nor its ``go``
    line can fail the build, and none of them may refuse it here."""
    known = posixpath.normpath(posixpath.join(module_dir, "go.mod"))

    @cache
    def sent(rel: str) -> bool:  # one field's checks ask of the same go.work
        return would_send(source, rel, known=known, use_gitignore=use_gitignore is not False)

    return sent


def check_program(
    value: str, local: ModuleOnDisk | None, *, extra: bool = False, main_package: str = ""
) -> str:
    """A program's package as ``go build`` takes it: a path becomes './path' (Go
    reads a bare 'cmd/x' as a standard-library path); an import path stays one,
    for ``go build`` to resolve in the module graph, unless it is inside the local
    module, where it becomes its './path' and is checked as that directory.
    ``extra``: one of ``extra_packages`` (beside ``main_package``)."""
    try:
        value = main_package_syntax(value)
    except WildcardPackage as wildcard:
        raise ValueError(wildcard_problem(wildcard.value, local, extra, main_package)) from None
    if local is None:
        return value
    module = local.directory
    if not value.startswith("./") and value != ".":
        own = module_path(module)
        if own and (value == own or value.startswith(own + "/")):
            value = "./" + value[len(own) + 1 :] if value != own else "."
        elif (module / value).is_dir():
            value = f"./{value}"  # a directory whose name has a dot, as before
        else:
            return value  # another module's package (a tool among the requirements)
    workspace = len(module_files(*local)) > 1
    check_main_dir(module, value, workspace=workspace, module_dir=local.module_dir)
    return value


def wildcard_problem(
    pattern: str, local: ModuleOnDisk | None, extra: bool, main_package: str
) -> str:
    """A wildcard refused, with the main packages it matches in a local module:
    a module of several programs (``cmd/*``) names one as main_package, the
    image's entrypoint, and the others in extra_packages."""
    what = "list each program here" if extra else "name the one main package to build"
    if local is None:
        return f"{show(pattern)} is a wildcard; {what}"
    matched = wildcard_matches(local.directory, pattern, module_path(local.directory))
    if extra:
        matched = [p for p in matched if p != main_package]
    if not matched:
        return (
            f"{show(pattern)} is a wildcard, and matches no main package in the module "
            f"(within {SCAN_DEPTH} levels); {what}"
        )
    shown = ", ".join(matched[:8]) + (", …" if len(matched) > 8 else "")
    rest = "" if extra else ", and list the others in extra_packages"
    return f"{show(pattern)} is a wildcard matching {shown}; {what}{rest}"


def check_extra_programs(
    values: list[str], local: ModuleOnDisk | None, main_package: str, main_name: str
) -> list[str]:
    """Each of ``extra_packages`` as :func:`check_program` checks it, and each
    program's file name in /usr/local/bin (go build's name for it) free: two
    programs on one path would leave one of them silently missing from the image.
    ``main_name``: the main package's program's name there (the app name)."""
    own = module_path(local.directory) if local else None
    taken: dict[str, str] = {}
    packages = []
    for given in values:
        package = check_program(given, local, extra=True, main_package=main_package)
        name = exec_name(package, own) if package != "." else ""
        if not name:
            raise ValueError(
                f"{show(given)} is the module's root; build it as main_package and "
                "list the others here"
            )
        if package == main_package:
            raise ValueError(f"{show(given)} is main_package already; list the others here")
        if name == main_name:
            raise ValueError(
                f"{show(given)} would be /usr/local/bin/{name}, the main package's "
                "program; set app_name to another name"
            )
        if name in taken:
            raise ValueError(f"{show(given)} would be /usr/local/bin/{name}, as {taken[name]!r} is")
        taken[name] = package
        packages.append(package)
    return packages
