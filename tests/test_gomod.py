"""A local module whose go.mod or go.work points at a directory the engine will not
get (a sibling module beside the source) is refused before engine work, with
the parameters that fix it; the fix then builds."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import anyio
import go as go_module
import pytest

from tasks.gomod import directives, go_line, local_dirs, replacements, requirements
from tasks.params import ParamsError, parse_params
from tests.dagger_test_engine.server import TestEngine
from tests.flowruns import build
from tests.oci_check import extract_file
from tests.prefect_fixtures import PrefectAPI
from tests.trees import write_tree

LIB = {
    "lib/go.mod": "module example.com/lib\n\ngo 1.22\n",
    "lib/lib.go": 'package lib\n\nfunc Greeting() string { return "hello from lib" }\n',
}
SVC_MAIN = (
    'package main\n\nimport (\n\t"fmt"\n\n\t"example.com/lib"\n)\n\n'
    "func main() { fmt.Println(lib.Greeting()) }\n"
)


def service(replace_line: str) -> dict[str, str]:
    return {
        "svc/go.mod": (
            "module example.com/svc\n\ngo 1.22\n\nrequire example.com/lib v0.0.0\n\n"
            f"{replace_line}\n"
        ),
        "svc/main.go": SVC_MAIN,
    }


def test_directives_read_as_gos_modfile_does() -> None:
    text = (
        "module example.com/m // the module\n"
        "go 1.23 // comment\n"
        "replace example.com/a => ../a\n"
        "replace (\n"
        '\t"example.com/b" v1.0.0 => "./b dir" // quoted\n'
        "\texample.com/c => example.com/c2 v1.2.3\n"
        "\t// replace example.com/d => ../d\n"
        ")\n"
    )
    assert list(directives(text, "replace")) == [
        ["example.com/a", "=>", "../a"],
        ["example.com/b", "v1.0.0", "=>", "./b dir"],
        ["example.com/c", "=>", "example.com/c2", "v1.2.3"],
    ]
    assert list(directives(text, "go")) == [["1.23"]]


def test_only_directory_replacements_of_required_modules_and_uses_are_read(
    tmp_path: Path,
) -> None:
    mod = tmp_path / "go.mod"
    mod.write_text(
        "module m\n\nrequire (\n\ta v1.0.0\n\tb v1.0.0\n\tc v1.0.0\n\td v1.0.0\n)\n\n"
        "replace (\n\ta => ../a\n\tb => b2 v1.0.0\n\tc => C:\\src\\c\n"
        "\td v0.9.0 => ../d-old\n\tgone => ../gone\n)\n"
    )
    required = requirements(mod)
    assert required == {("a", "v1.0.0"), ("b", "v1.0.0"), ("c", "v1.0.0"), ("d", "v1.0.0")}
    # b: a module, not a directory; d v0.9.0 and gone: replacements Go never reads.
    assert list(local_dirs([mod], required)) == [
        (mod, "replaces a with", "../a"),
        (mod, "replaces c with", "C:\\src\\c"),
    ]
    work = tmp_path / "go.work"
    work.write_text("go 1.22\n\nuse (\n\t.\n\t./svc\n)\nuse ../x\n")
    assert [d for _, _, d in local_dirs([mod, work], set())] == [".", "./svc", "../x"]
    assert go_line(work) == "1.22"


def test_a_stale_replacement_outside_the_source_is_harmless(tmp_path: Path) -> None:
    """Go reads no replacement of a module it does not require (checked with the
    real go command: ``go mod download`` and ``go build`` pass), so neither do we."""
    src = write_tree(
        tmp_path / "app",
        {
            "go.mod": "module example.com/app\n\ngo 1.22\n\nreplace example.com/gone => ../gone\n",
            "main.go": "package main\n\nfunc main() {}\n",
        },
    )
    env = {**os.environ, "GOTOOLCHAIN": "local", "GOPROXY": "off", "GOFLAGS": "-mod=readonly"}
    env["GOCACHE"] = str(tmp_path / "gocache")
    go = str(Path(go_module.__file__).parent / "bin" / "go")
    subprocess.run([go, "build", "-o", os.devnull, "."], cwd=src, env=env, check=True)
    assert parse_params({"source": str(src)}).module_dir == "."


def test_a_sibling_replacement_is_refused_with_the_fix(tmp_path: Path) -> None:
    write_tree(tmp_path, {**LIB, **service("replace example.com/lib => ../lib")})
    with pytest.raises(ParamsError) as err:
        parse_params({"source": str(tmp_path / "svc")})
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("module_dir: go.mod replaces example.com/lib with ../lib, outside")
    assert message.endswith(f"set source to {str(tmp_path)!r} and module_dir to 'svc'")


def test_a_workspace_using_a_directory_outside_the_source_is_refused(tmp_path: Path) -> None:
    write_tree(
        tmp_path,
        {
            **LIB,
            "repo/go.work": "go 1.22\n\nuse (\n\t./svc\n\t../lib\n)\n",
            "repo/svc/go.mod": "module example.com/svc\n\ngo 1.22\n",
            "repo/svc/main.go": "package main\n\nfunc main() {}\n",
        },
    )
    with pytest.raises(ParamsError, match=r"^module_dir: go\.work uses \.\./lib, outside"):
        parse_params({"source": str(tmp_path / "repo"), "module_dir": "svc"})


def test_an_absolute_replacement_is_refused(tmp_path: Path) -> None:
    write_tree(tmp_path, {**LIB, **service(f"replace example.com/lib => {tmp_path}/lib")})
    with pytest.raises(ParamsError, match="an absolute path of this machine"):
        parse_params({"source": str(tmp_path), "module_dir": "svc"})


def test_a_replacement_without_a_module_is_refused(tmp_path: Path) -> None:
    write_tree(tmp_path, service("replace example.com/lib => ../lib"))
    (tmp_path / "lib").mkdir()
    with pytest.raises(ParamsError, match=r"replaces example\.com/lib with \.\./lib, which has no"):
        parse_params({"source": str(tmp_path), "module_dir": "svc"})


def test_module_replacements_are_not_directories(tmp_path: Path) -> None:
    write_tree(tmp_path, service("replace example.com/lib => example.com/fork v1.0.0"))
    assert parse_params({"source": str(tmp_path / "svc")}).module_dir == "."


def test_the_suggested_source_builds(
    prefect_api: PrefectAPI, dagger_engine: TestEngine, tmp_path: Path
) -> None:
    repo = write_tree(tmp_path / "repo", {**LIB, **service("replace example.com/lib => ../lib")})
    with pytest.raises(ParamsError, match="set source to"):
        parse_params({"source": str(repo / "svc")})
    out = tmp_path / "svc.oci.tar"
    state = build(source=str(repo), module_dir="svc", output=str(out), run_checks=False)
    assert state.is_completed(), state.message
    binary = extract_file(f"oci-archive:{out}", "/usr/local/bin/svc", tmp_path / "bin", "amd64")
    run = subprocess.run([str(binary)], capture_output=True, text=True, check=True)
    assert run.stdout.strip() == "hello from lib"


def test_a_source_without_a_module_at_its_root_names_its_modules(tmp_path: Path) -> None:
    write_tree(
        tmp_path,
        {
            "README.md": "# repo\n",
            "backend/go.mod": "module example.com/backend\n",
            "tools/gen/go.mod": "module example.com/gen\n",
            "tools/gen/main.go": "package main\n\nfunc main() {}\n",
            "backend/vendor/example.com/x/go.mod": "module example.com/x\n",  # not a candidate
            "web/node_modules/pkg/go.mod": "module example.com/pkg\n",  # nor this
            ".cache/mod/go.mod": "module example.com/cached\n",  # nor this
        },
    )
    with pytest.raises(ParamsError) as err:
        parse_params({"source": str(tmp_path)})
    assert str(err.value) == (
        f"module_dir: source {str(tmp_path)!r} has no go.mod; set module_dir to a module: "
        "'backend', 'tools/gen'"
    )
    with pytest.raises(ParamsError, match=r"directory 'tools', has no go\.mod; .* 'tools/gen'$"):
        parse_params({"source": str(tmp_path), "module_dir": "tools"})
    assert parse_params({"source": str(tmp_path), "module_dir": "tools/gen"}).module_dir == (
        "tools/gen"
    )


def go_command() -> str:
    return str(Path(go_module.__file__).parent / "bin" / "go")


def offline_go_env(tmp_path: Path) -> dict[str, str]:
    return {
        **os.environ,
        "GOTOOLCHAIN": "local",
        "GOPROXY": "off",
        "GOFLAGS": "-mod=mod",
        "GOCACHE": str(tmp_path / "gocache"),
        "GOMODCACHE": str(tmp_path / "gomodcache"),
        "GOWORK": "off",
    }


# go.mod texts whose grammar has caught readers out; each is read here and by the
# real go command (`go mod edit -json`), and the two must agree.
GRAMMAR = {
    "paren-glued-to-verb": (
        "module m\n\ngo 1.22\n\nrequire(\n\ta v1.0.0\n)\n\nreplace(\n\ta => ../a\n)\n"
    ),
    "comment-glued-to-word": (
        "module m// the module\n\ngo 1.22// x\n\nrequire a v1.0.0\n\nreplace a => ../a// was ../b\n"
    ),
    "line-separator-in-comment": "module m\n\n// note\u2028go 1.99\ngo 1.22\n",
    "next-line-in-comment": (
        "module m\n\ngo 1.22\n\nrequire a v1.0.0\n\n// was:\u0085replace a => ../../a\n"
    ),
    "go-inside-another-block": "module m\n\nrequire (\n\tgo v1.0.0\n)\n\ngo 1.22\n",
    "crlf-and-escapes": (
        'module m\r\n\r\ngo 1.22\r\n\r\nrequire "a" v1.0.0\r\n\r\nreplace "\\x61" => "./a dir"\r\n'
    ),
    "empty-block-and-versions": (
        "module m\n\ngo 1.22\n\nexclude ( )\n\n"
        "require (\n\ta v1.0.0\n\tb v1.2.0 // indirect\n)\n\n"
        "replace (\n\ta v1.0.0 => ./a\n\tb => example.com/b2 v1.0.0\n)\n"
    ),
}


@pytest.mark.parametrize("name", sorted(GRAMMAR))
def test_go_mod_grammar_agrees_with_go_mod_edit(name: str, tmp_path: Path) -> None:
    import json

    mod = tmp_path / "go.mod"
    mod.write_text(GRAMMAR[name], newline="")
    out = subprocess.run(
        [go_command(), "mod", "edit", "-json", str(mod)],
        capture_output=True,
        text=True,
        check=True,
        env=offline_go_env(tmp_path),
    )
    go = json.loads(out.stdout)
    ours_module = next(iter(directives(mod.read_text(), "module")), [None])[0]
    assert ours_module == go["Module"]["Path"]
    assert go_line(mod) == go.get("Go")
    assert requirements(mod) == {(r["Path"], r["Version"]) for r in go.get("Require") or []}
    assert [(r.path, r.version, r.new) for r in replacements(mod)] == [
        (
            r["Old"]["Path"],
            r["Old"].get("Version", ""),
            (r["New"]["Path"], r["New"]["Version"])
            if r["New"].get("Version")
            else (r["New"]["Path"],),
        )
        for r in go.get("Replace") or []
    ]


def go_builds_from_the_source_alone(source: Path, module_dir: str, tmp_path: Path, *flags: str):
    """Run the real go command as the builder would: on a copy of the source alone."""
    import shutil

    copy = tmp_path / "engine" / "src"
    shutil.copytree(source, copy)
    env = {**offline_go_env(tmp_path), "GOFLAGS": " ".join(flags)}
    env.pop("GOWORK")
    return subprocess.run(
        [go_command(), "build", "-o", os.devnull, "."],
        cwd=copy / module_dir,
        env=env,
        capture_output=True,
        text=True,
    )


def test_a_vendored_module_needs_no_replacement_directory(tmp_path: Path) -> None:
    """Built with -mod=vendor and no download, Go reads the vendored copy, not the
    replacement (checked here with the real go command on the source alone)."""
    svc = (
        write_tree(
            tmp_path / "repo",
            {
                **LIB,
                **service("replace example.com/lib => ../lib"),
                "svc/vendor/modules.txt": (
                    "# example.com/lib v0.0.0 => ../lib\n## explicit\nexample.com/lib\n"
                    "# example.com/lib => ../lib\n"
                ),
                "svc/vendor/example.com/lib/lib.go": LIB["lib/lib.go"],
            },
        )
        / "svc"
    )
    assert parse_params({"source": str(svc)}).module_dir == "."
    done = go_builds_from_the_source_alone(svc, ".", tmp_path, "-mod=vendor")
    assert done.returncode == 0, done.stderr


def test_a_workspace_replacement_overrides_the_go_mod_one(tmp_path: Path) -> None:
    """go.work's replace of the required version wins over go.mod's replace of
    every version, which Go then never reads (the real go command builds it)."""
    repo = write_tree(
        tmp_path / "repo",
        {
            **LIB,
            "go.work": "go 1.22\n\nuse ./svc\n\nreplace example.com/lib v0.0.0 => ./lib\n",
            **service("replace example.com/lib => ../../old/lib"),
        },
    )
    assert parse_params({"source": str(repo), "module_dir": "svc"}).module_dir == "svc"
    done = go_builds_from_the_source_alone(repo, "svc", tmp_path, "-mod=readonly")
    assert done.returncode == 0, done.stderr
    # Without the workspace's rule, the go.mod's is read, and it points outside.
    (repo / "go.work").write_text(
        "go 1.22\n\nuse ./svc\n\nreplace example.com/lib v9.9.9 => ./lib\n"
    )
    with pytest.raises(
        ParamsError, match=r"svc/go\.mod replaces example\.com/lib with \.\./\.\./old"
    ):
        parse_params({"source": str(repo), "module_dir": "svc"})


def test_a_block_glued_to_its_verb_is_read(tmp_path: Path) -> None:
    """``replace(`` opens a block, as Go's lexer reads it: its outside directory is
    refused before the engine, where go mod download would fail."""
    write_tree(tmp_path, {**LIB, **service("replace(\n\texample.com/lib => ../lib\n)")})
    with pytest.raises(
        ParamsError, match=r"go\.mod replaces example\.com/lib with \.\./lib, outside"
    ):
        parse_params({"source": str(tmp_path / "svc")})


def test_a_module_directory_the_context_leaves_out_is_refused_before_the_engine(
    tmp_path: Path,
) -> None:
    """A replacement inside the source that git ignores (a vendoring script's
    third_party/), or a go.work ``use`` that .dockerignore leaves out: the engine
    would not get its go.mod, and go mod download would fail there. use_gitignore
    off sends what git ignores, and the same source then loads."""
    from tasks.source import describe_local
    from tests.gitrepo import commit_all

    repo = write_tree(
        tmp_path / "repo",
        {
            **{f"third_party/{k}": v for k, v in LIB.items()},
            "go.mod": (
                "module example.com/svc\n\ngo 1.22\n\nrequire example.com/lib v0.0.0\n\n"
                "replace example.com/lib => ./third_party/lib\n"
            ),
            "main.go": SVC_MAIN,
            ".gitignore": "/third_party/\n",
        },
    )
    commit_all(repo, "init")
    params = parse_params({"source": str(repo)})  # parameters alone cannot tell
    with pytest.raises(ParamsError) as err:
        describe_local(params)
    assert str(err.value) == (
        "module_dir: go.mod replaces example.com/lib with ./third_party/lib, but "
        ".dockerignore or .gitignore leaves third_party/lib/go.mod out of what the engine "
        "gets; use_gitignore=false sends what git ignores"
    )
    sent = describe_local(parse_params({"source": str(repo), "use_gitignore": False}))
    assert sent.files == 5  # the go.mod, main.go, .gitignore and the library's two

    work = write_tree(
        tmp_path / "work",
        {
            **LIB,
            "go.work": "go 1.22\n\nuse (\n\t./svc\n\t./lib\n)\n",
            "svc/go.mod": "module example.com/svc\n\ngo 1.22\n",
            "svc/main.go": SVC_MAIN,
            ".dockerignore": "lib\n",
        },
    )
    with pytest.raises(ParamsError, match=r"^module_dir: go\.work uses \./lib, but \.dockerignore"):
        describe_local(parse_params({"source": str(work), "module_dir": "svc"}))


def test_whether_a_build_is_vendored_is_read_from_the_files_sent(tmp_path: Path) -> None:
    """A vendor/ that .dockerignore leaves out does not make the build vendored:
    the compile stage builds with -mod=vendor only when vendor/modules.txt is sent,
    so a replacement left out beside it would fail in the engine's go mod
    download, and is refused. With vendor/ sent, Go reads no replacement, so the
    same replacement may stay out."""
    from tasks.source import describe_local

    files = {
        **{f"third_party/{k}": v for k, v in LIB.items()},
        "go.mod": (
            "module example.com/svc\n\ngo 1.22\n\nrequire example.com/lib v0.0.0\n\n"
            "replace example.com/lib => ./third_party/lib\n"
        ),
        "go.sum": "",
        "main.go": SVC_MAIN,
        "vendor/modules.txt": "# example.com/lib v0.0.0 => ./third_party/lib\n## explicit\n",
    }
    unvendored = write_tree(tmp_path / "a", {**files, ".dockerignore": "vendor\nthird_party\n"})
    with pytest.raises(ParamsError) as err:
        describe_local(parse_params({"source": str(unvendored)}))
    assert str(err.value) == (
        "module_dir: go.mod replaces example.com/lib with ./third_party/lib, but "
        ".dockerignore leaves third_party/lib/go.mod out of what the engine gets"
    )
    vendored = write_tree(tmp_path / "b", {**files, ".dockerignore": "third_party\n"})
    sent = describe_local(parse_params({"source": str(vendored)}))
    assert sent.vendor_manifests == ["vendor/modules.txt"]


def test_a_main_package_or_go_mod_the_context_leaves_out_is_refused_before_the_engine(
    tmp_path: Path,
) -> None:
    """A .dockerignore line ``cmd`` leaves main_package's Go files out (the engine's
    go build would find no package there), one ``go.mod`` the module's own; both
    are named with their parameter. Test files alone do not count as sent."""
    from tasks.source import describe_local

    src = write_tree(
        tmp_path / "app",
        {
            "go.mod": "module example.com/app\n\ngo 1.22\n",
            "cmd/app/main.go": "package main\n\nfunc main() {}\n",
            "cmd/app/main_test.go": "package main\n",
            "cmd/tool/main.go": "package main\n\nfunc main() {}\n",
            ".dockerignore": "cmd/app/main.go\ncmd/tool\n",
        },
    )
    params = parse_params({"source": str(src), "main_package": "./cmd/app"})
    with pytest.raises(ParamsError) as err:
        describe_local(params)
    assert str(err.value) == (
        "main_package: './cmd/app': .dockerignore leaves its Go files out of what the "
        "engine gets"
    )
    (src / ".dockerignore").write_text("cmd/tool\n")
    assert describe_local(params).files == 4
    with pytest.raises(ParamsError, match=r"^extra_packages: './cmd/tool': \.dockerignore"):
        describe_local(parse_params({**params.model_dump(), "extra_packages": ["./cmd/tool"]}))
    (src / ".dockerignore").write_text("go.mod\n")
    with pytest.raises(ParamsError, match=r"^module_dir: \.dockerignore leaves go\.mod out"):
        describe_local(params)


def test_go_sum_counts_once_there_are_requirements_and_a_go_work_left_out_is_not_read(
    tmp_path: Path,
) -> None:
    """A go.sum left out would fail in the engine as if it were untidy, but only a
    module with requirements reads it. A go.work git ignores (Go's own advice is
    not to commit one) is not read in the engine, nor are the directories it uses:
    the module builds alone, as CI builds it."""
    from tasks.source import describe_local
    from tests.gitrepo import commit_all

    src = write_tree(
        tmp_path / "app",
        {
            "go.mod": "module example.com/app\n\ngo 1.22\n",
            "go.sum": "",
            "main.go": "package main\n\nfunc main() {}\n",
            ".dockerignore": "go.sum\n",
        },
    )
    assert describe_local(parse_params({"source": str(src)})).files == 3
    (src / "go.mod").write_text(
        "module example.com/app\n\ngo 1.22\n\nrequire example.com/dep v1.0.0\n"
    )
    with pytest.raises(ParamsError, match=r"^module_dir: \.dockerignore leaves go\.sum out"):
        describe_local(parse_params({"source": str(src)}))

    repo = write_tree(
        tmp_path / "repo",
        {
            **LIB,
            "go.work": "go 1.22\n\nuse (\n\t./svc\n\t./lib\n)\n",
            "svc/go.mod": "module example.com/svc\n\ngo 1.22\n",
            "svc/main.go": "package main\n\nfunc main() {}\n",
            ".gitignore": "/go.work\n/lib/\n",
        },
    )
    commit_all(repo, "init")
    loaded = describe_local(parse_params({"source": str(repo), "module_dir": "svc"}))
    assert loaded.files == 3  # .gitignore and svc's two files


def test_a_go_work_the_engine_does_not_get_refuses_nothing(tmp_path: Path) -> None:
    """A developer's own go.work, ignored by git as Go advises, that uses a
    checkout beside the repository, or names a Go no builder has: the engine never
    reads it (the module builds alone, with no workspace), so the parameter check
    reads it no more. Sent (use_gitignore off), it is read and refused as before;
    .dockerignore leaving it out counts as git ignoring it does."""
    from tasks.compile import workspace_file
    from tasks.source import describe_local
    from tests.gitrepo import commit_all
    from tests.test_go_projects import _Untouchable

    write_tree(tmp_path / "other", {"go.mod": "module example.com/other\n\ngo 1.22\n"})
    repo = write_tree(
        tmp_path / "repo",
        {
            "go.mod": "module example.com/app\n\ngo 1.22\n",
            "main.go": "package main\n\nfunc main() {}\n",
            "go.work": "go 1.99\n\nuse (\n\t.\n\t../other\n)\n",
            ".gitignore": "/go.work\n",
        },
    )
    commit_all(repo, "init")
    params = parse_params({"source": str(repo)})
    source = describe_local(params)
    assert source.workspaces == []
    assert anyio.run(workspace_file, _Untouchable(), params, source) is None
    with pytest.raises(ParamsError) as err:
        parse_params({"source": str(repo), "use_gitignore": False})
    assert str(err.value).startswith(
        "module_dir: go.work uses ../other, outside source"
    )
    (repo / ".dockerignore").write_text("go.work\n")
    parse_params({"source": str(repo), "use_gitignore": False})
    # The go line of a go.work that is sent is still held against the builder.
    (repo / ".dockerignore").unlink()
    (repo / "go.work").write_text("go 1.99\n\nuse .\n")
    with pytest.raises(ParamsError, match=r"^builder_image: .* but go\.work needs go >= 1\.99"):
        parse_params({"source": str(repo), "use_gitignore": False})
    parse_params({"source": str(repo)})
