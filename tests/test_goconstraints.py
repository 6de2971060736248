"""Which Go files a static build compiles for a platform, held against ``go list``.

Each directory below is a shape real repositories have (a program only for
Windows, a cgo program, a generator beside a library under a tag other than
``ignore``, ``// +build`` lines, ``_``-prefixed files); the real go command lists
the files it compiles for linux/amd64 and linux/arm64 (``CGO_ENABLED=0``, with
and without a tag), and ``tasks/goconstraints.py`` must agree file by file, or
say it cannot know (``go1.N`` tags, which only the builder's Go knows).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import go as go_module
import pytest

from tasks.goconstraints import Target, go_files, read_go_file, targets
from tasks.params import ParamsError, parse_params
from tests.trees import write_tree

MAIN = "package main\n\nfunc main() {}\n"
LIB = "package lib\n\nfunc F() {}\n"
CGO = 'package main\n\n/*\n#include <stdio.h>\n*/\nimport "C"\n\nfunc main() {}\n'


def tagged(line: str, package: str = "main") -> str:
    body = "\n\nfunc main() {}\n" if package == "main" else "\n"
    return f"{line}\n\npackage {package}{body}"


CASES: dict[str, dict[str, str]] = {
    "windows-name": {"main_windows.go": MAIN},
    "arch-name": {"prog_arm64.go": MAIN, "doc.go": "package main\n"},
    "os-arch-name": {"a_linux_amd64.go": MAIN, "b_linux_arm64.go": MAIN},
    "names-that-are-not-constraints": {"linux.go": MAIN, "x_unix.go": "package main\n"},
    "gobuild-windows": {"main.go": tagged("//go:build windows")},
    "plus-build-windows": {"main.go": tagged("// +build windows")},
    "plus-build-without-blank-line": {
        "main.go": "// +build ignore\npackage main\n\nfunc main() {}\n"
    },
    "gobuild-in-block-comment": {"main.go": "/*\n//go:build ignore\n*/\n\n" + MAIN},
    "gobuild-after-block-comment": {"main.go": "/* licence */\n//go:build ignore\n\n" + MAIN},
    "gobuild-wins-over-plus-build": {"main.go": tagged("//go:build linux\n// +build ignore")},
    "unix": {"main.go": tagged("//go:build unix")},
    "expression": {"main.go": tagged("//go:build (linux && !arm64) || premium")},
    "plus-build-or-and": {"main.go": tagged("// +build linux,!arm64 premium")},
    "plus-build-unspaced": {"main.go": tagged("//+build linux")},
    "plus-build-empty": {"main.go": tagged("// +build")},
    "plus-build-after-block-comment": {"main.go": tagged("/* licence */\n\n// +build windows")},
    "plus-build-inside-block-comment": {"main.go": tagged("/*\n\n// +build windows\n\n*/")},
    "cgo-only": {"main.go": CGO},
    "cgo-grouped-import": {
        "main.go": 'package main\n\nimport (\n\t"fmt"\n\t"C"\n)\n\nfunc main() { fmt.Println() }\n'
    },
    "cgo-and-pure": {"c.go": tagged("//go:build cgo"), "pure.go": tagged("//go:build !cgo")},
    "generator-beside-library": {"lib.go": LIB, "gen.go": tagged("//go:build none")},
    "underscore-and-dot-files": {"lib.go": LIB, "_main.go": MAIN, ".main.go": MAIN},
    "release-tag": {"main.go": tagged("//go:build go1.21")},
    "feature-tag": {"main.go": tagged("//go:build amd64.v1 || arm64.v8.0")},
    "cgo-under-a-true-constraint": {"main.go": "//go:build linux\n\n" + CGO},
}
PLATFORMS = ["linux/amd64", "linux/arm64"]


def go_list(root: Path, platform: str, tags: list[str], tmp: Path) -> dict[str, list[str]]:
    """{directory: the files go compiles there} from the real go command."""
    goos, goarch = platform.split("/")
    env = {
        **os.environ,
        "GOOS": goos,
        "GOARCH": goarch,
        "CGO_ENABLED": "0",
        "GOTOOLCHAIN": "local",
        "GOPROXY": "off",
        "GOFLAGS": f"-tags={','.join(tags)}" if tags else "",
        "GOCACHE": str(tmp / "gocache"),
        "GOWORK": "off",
    }
    go = str(Path(go_module.__file__).parent / "bin" / "go")
    out = subprocess.run(
        [go, "list", "-e", "-json=Dir,GoFiles", "./..."],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    decoder, at, found = json.JSONDecoder(), 0, {}
    while at < len(out.rstrip()):
        item, end = decoder.raw_decode(out, at)
        at = end + 1
        found[Path(item["Dir"]).name] = item.get("GoFiles") or []
    return found


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("constraints")
    write_tree(root, {"go.mod": "module example.com/c\n\ngo 1.22\n"})
    for name, files in CASES.items():
        write_tree(root / name, files)
    return root


@pytest.mark.parametrize("tags", [[], ["premium"]])
@pytest.mark.parametrize("platform", PLATFORMS)
def test_files_kept_agree_with_go_list(
    corpus: Path, platform: str, tags: list[str], tmp_path: Path
) -> None:
    listed = go_list(corpus, platform, tags, tmp_path)
    [target] = targets([platform], tags)
    unsure = []
    for case in CASES:
        directory = corpus / case
        names = go_files(p.name for p in directory.iterdir())
        assert sorted(set(names)) == names
        for name in names:
            ours = read_go_file(directory / name).builds_for(target)
            theirs = name in listed.get(case, [])
            if ours is None:
                unsure.append(f"{case}/{name}")
                continue
            assert ours == theirs, f"{case}/{name} for {platform} {tags}: go says {theirs}"
    # Only the release tag is left open: which Go the builder has is its own.
    assert sorted(unsure) == ["feature-tag/main.go", "release-tag/main.go"]


def test_goflags_tags_leave_other_tags_open() -> None:
    [target] = targets(["linux/amd64"], [], goflags="-mod=mod -tags=extra")
    assert target.tag("extra") is None and target.tag("windows") is None
    assert target.tag("linux") is True and target.tag("unix") is True
    [plain] = targets(["linux/amd64"], ["extra"], goflags="-mod=mod")
    assert plain.tag("extra") is True and plain.tag("windows") is False
    assert plain.tag("cgo") is False


def test_a_program_only_for_another_os_is_refused_before_the_engine(tmp_path: Path) -> None:
    root = write_tree(
        tmp_path / "m",
        {
            "go.mod": "module example.com/m\n\ngo 1.22\n",
            "main.go": MAIN,
            **{f"cmd/win/{k}": v for k, v in CASES["windows-name"].items()},
            **{f"cmd/c/{k}": v for k, v in CASES["cgo-only"].items()},
        },
    )
    with pytest.raises(ParamsError) as caught:
        parse_params({"source": str(root), "main_package": "./cmd/win"})
    assert str(caught.value) == (
        "main_package: build constraints exclude all Go files in './cmd/win' for linux/amd64 "
        "(main_windows.go: its file name); main packages in this module: ."
    )
    with pytest.raises(ParamsError, match=r'^extra_packages: .*main\.go: imports "C", and cgo'):
        parse_params({"source": str(root), "extra_packages": ["./cmd/c"]})
    write_tree(root, {"cmd/c/main.go": "//go:build linux\n\n" + CGO})  # the reason is cgo
    with pytest.raises(ParamsError, match=r'^extra_packages: .*main\.go: imports "C", and cgo'):
        parse_params({"source": str(root), "extra_packages": ["./cmd/c"]})


def test_a_program_for_one_platform_only_is_refused_for_the_other(tmp_path: Path) -> None:
    root = write_tree(
        tmp_path / "m",
        {"go.mod": "module example.com/m\n\ngo 1.22\n", "prog_arm64.go": MAIN},
    )
    assert parse_params({"source": str(root), "platforms": ["linux/arm64"]}).main_package == "."
    with pytest.raises(ParamsError) as caught:
        parse_params({"source": str(root), "platforms": ["linux/arm64", "linux/amd64"]})
    assert str(caught.value).startswith(
        "main_package: build constraints exclude all Go files in '.' for linux/amd64 "
        "(prog_arm64.go: its file name)"
    )


def test_a_generator_tagged_otherwise_than_ignore_is_not_the_package(tmp_path: Path) -> None:
    root = write_tree(
        tmp_path / "m",
        {
            "go.mod": "module example.com/m\n\ngo 1.22\n",
            **CASES["generator-beside-library"],
            "cmd/tool/main.go": MAIN,
        },
    )
    with pytest.raises(ParamsError) as caught:
        parse_params({"source": str(root)})
    assert str(caught.value) == (
        "main_package: '.' is package lib, not a main package; "
        "main packages in this module: ./cmd/tool"
    )
    assert Target("linux", "amd64").tag("none") is False
