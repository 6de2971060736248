"""Whether the builder image's Go is new enough for the module it builds.

The official ``golang`` images set ``GOTOOLCHAIN=local``: their Go never fetches
a newer toolchain, so a module whose ``go`` line (in ``go.mod``, or ``go.work``
for a workspace) names a newer Go fails in the engine with
``go: go.mod requires go >= 1.28 (running go 1.27.3; GOTOOLCHAIN=local)``. The
``toolchain`` line does not matter there (Go ignores it under ``local``).

For a local module, both sides are known before any engine work: the ``go``
lines are read from the files, and a ``golang`` image's tag names its Go
(``1.27.3-bookworm``, ``1.27-alpine``, ``1.28rc1``). A build is refused only
on a sure answer; an image pinned by digest is not judged by its tag (the
digest is what the engine pulls), and tags with no version (``alpine``,
``1-bookworm``) or other images are left to the engine, whose failure then
gets a hint naming ``builder_image`` (``tasks/gohints.py``).

Versions compare as Go's ``go/version`` package compares them: ``1.21`` (a
language version) < ``1.21rc1`` < ``1.21.0`` < ``1.21.1``; before 1.21 a
release was named ``1.N``, so ``1.20`` is ``1.20.0``. A builder older than Go
1.21 is not judged: its Go read the ``go`` line as advisory. No PyPI package
parses Go versions and is kept up; the grammar is small.

A workspace has a rule of its own: Go refuses a ``go.work`` whose ``go`` line is
older than that of a module it uses (``module svc listed in go.work file requires
go >= 1.27.4, but go.work lists go 1.22``), whatever the builder; a newer image
does not help, raising the go.work's line does (:func:`check_workspace_go`).
"""

from __future__ import annotations

import re
from pathlib import Path

from tasks.gomod import Sent, go_line, module_files, uses
from tasks.imageref import parse_image_ref, show

_VERSION = re.compile(r"(\d+)\.(\d+)(?:\.(\d+)|(beta|rc)(\d+))?", re.ASCII)
# A golang tag's version: 1.27, 1.27.3, 1.28rc1; or 1.28-rc (the newest rc of 1.28).
_IMAGE_TAG = re.compile(r"(\d+\.\d+(?:\.\d+|(?:beta|rc)\d+)?)(-rc)?(?:-|$)", re.ASCII)
_KIND = {None: 0, "beta": 1, "rc": 2}
_RELEASE = 3
_FLOATING = 1 << 30  # a tag without a patch (or rc) number is any of its minor's
_GO_LINE_ENFORCED = (1, 21)  # Go 1.21 made the go line a minimum (GOTOOLCHAIN)


def version_key(text: str) -> tuple[int, int, int, int] | None:
    """A sort key for a Go version ('1.21', '1.21rc1', '1.21.3'), None if not one."""
    m = _VERSION.fullmatch(text)
    if m is None:
        return None
    major, minor, patch, kind, number = m.groups()
    if patch is not None:
        return int(major), int(minor), _RELEASE, int(patch)
    if kind is not None:
        return int(major), int(minor), _KIND[kind], int(number)
    if (int(major), int(minor)) < _GO_LINE_ENFORCED:
        return int(major), int(minor), _RELEASE, 0  # go1.20 was the 1.20.0 release
    return int(major), int(minor), _KIND[None], 0


def required_go(
    source: Path, module_dir: str, sent: Sent | None = None
) -> tuple[str, str] | None:
    """The newest Go the module's files ask for (:func:`tasks.gomod.module_files`,
    which takes ``sent``), with the file that asks for it, relative to the source."""
    root = source.resolve()
    best: tuple[str, str] | None = None
    best_key: tuple[int, int, int, int] | None = None
    for path in module_files(source, module_dir, sent):
        version = go_line(path)
        key = version_key(version) if version else None
        if version and key and (best_key is None or key > best_key):
            best, best_key = (version, path.relative_to(root).as_posix()), key
    return best


def image_go(ref: str) -> tuple[str, tuple[int, int, int, int]] | None:
    """The Go of a ``golang`` image, judged by its tag: the version as the tag
    says it, and the newest version it can stand for (a tag with no patch
    number floats over its minor's patches). None where the tag cannot tell:
    a digest (the engine pulls that, whatever the tag says), no version in the
    tag, or an image that is not ``golang``."""
    try:
        parsed = parse_image_ref(ref)
    except ValueError:
        return None
    if parsed.digest or parsed.path.rsplit("/", 1)[-1] != "golang":
        return None
    m = _IMAGE_TAG.match(parsed.tag)
    if m is None:
        return None
    version = m.group(1)
    key = version_key(version)
    if key is None:
        return None
    if m.group(2):  # 1.28-rc: some release candidate of 1.28, not a release
        return f"{version}rc", (key[0], key[1], _KIND["rc"], _FLOATING)
    if version.count(".") == 1 and key[2] != _KIND["rc"] and key[2] != _KIND["beta"]:
        key = (key[0], key[1], _RELEASE, _FLOATING)  # no patch: its minor's newest
    return version, key


def check_builder_go(
    builder_image: str, source: Path, module_dir: str, sent: Sent | None = None
) -> None:
    """Refuse a ``golang`` builder whose tag surely names an older Go than the
    module's ``go`` line, before the engine would say so after starting."""
    image = image_go(builder_image)
    needed = required_go(source, module_dir, sent)
    if image is None or needed is None:
        return
    (has, has_key), (version, where) = image, needed
    needed_key = version_key(version)
    if needed_key is None or has_key >= needed_key or has_key[:2] < _GO_LINE_ENFORCED:
        return
    repository = parse_image_ref(builder_image).repository
    raise ValueError(
        f"{show(builder_image)} has Go {has}, but {where} needs go >= {version} "
        f"(golang images build with their own Go, GOTOOLCHAIN=local); use a newer "
        f"image, e.g. {repository}:{_pinned_tag_for(version)}"
    )


def _pinned_tag_for(version: str) -> str:
    """The first golang tag, pinned to a patch, whose Go satisfies ``version``: a
    release or pre-release names itself, a language version its ``.0`` release."""
    key = version_key(version)
    return f"{version}.0" if key is not None and key[2] == _KIND[None] else version


def check_workspace_go(source: Path, module_dir: str, sent: Sent | None = None) -> None:
    """Refuse a workspace whose go.work names an older Go than a module it uses
    inside the source: Go refuses it with any builder (a go.work the engine gets:
    ``sent``, as :func:`tasks.gomod.module_files` takes it)."""
    files = module_files(source, module_dir, sent)
    if len(files) < 2:
        return
    work = files[1]
    listed = go_line(work)
    listed_key = version_key(listed) if listed else None
    if listed is None or listed_key is None:
        return
    root = source.resolve()
    for written in uses(work):
        module = (work.parent / written).resolve()
        if module != root and root not in module.parents:
            continue
        needed = go_line(module / "go.mod")
        needed_key = version_key(needed) if needed else None
        if needed and needed_key and needed_key > listed_key:
            shown = (module / "go.mod").relative_to(root).as_posix()
            raise ValueError(
                f"{work.relative_to(root).as_posix()} lists go {listed}, but {shown} needs "
                f"go >= {needed}, and Go refuses a workspace older than its modules; raise "
                f"the go line of go.work to {needed} ('go work use' does)"
            )
