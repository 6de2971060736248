"""One line on what to change, for the go command failures a user of this tool meets.

A failed ``go`` command's own words are shown in full (the CLI's summary, the
failure artifact); for the failures whose fix is a parameter of this build, or
a known step in the repository, a hint follows them, naming it. Each pattern is
the text cmd/go prints (matched on stderr, where go writes its own messages):

- ``gover.TooNewError``: ``go.mod requires go >= 1.28 (running go 1.27.3;
  GOTOOLCHAIN=local)``, also for a go.work or a dependency: ``builder_image``;
- a module fetch refused for want of credentials (``401 Unauthorized``, ``403
  Forbidden`` from a proxy, or git's ``terminal prompts disabled``):
  ``go_auth_secret_block`` and ``GOPRIVATE``;
- ``exec: "git": executable file not found``: a module fetched from its
  repository (``GOPRIVATE``, ``GOPROXY=direct``) by a builder image without git,
  such as the ``-alpine`` golang images: ``builder_image``;
- ``no modules specified`` (``go mod download``) or ``go.mod file not found``:
  no go.mod where ``module_dir`` points, in a git URL's tree, which only the engine
  sees (a local source is checked before any engine work): ``module_dir``;
- ``cannot load module DIR listed in go.work file`` or a replacement directory
  that is missing: a directory the repository's go.work or go.mod names is not in
  the source (checked before any engine work for a local source; a git URL's
  tree is only known to the engine);
- ``missing go.sum entry`` / ``updates to go.mod needed``: the module is not
  tidy, and the build, like ``go build``, reads it with ``-mod=readonly``;
- ``inconsistent vendoring``: vendor/ is older than go.mod; go's own advice
  (``-mod=readonly``) is not a parameter here (GOFLAGS may not set ``-mod``), so
  the hint names Go's other advice (``go mod vendor``, or ``go work vendor`` in a
  workspace), or leaving vendor/ out;
- ``build constraints exclude all Go files``: nothing in the package builds for
  the target with ``CGO_ENABLED=0`` (cgo files, ``//go:build`` lines, file-name
  suffixes, ``build_tags``);
- ``pattern P: no matching files found`` (or ``contains no embeddable files``): a
  ``//go:embed`` names files the engine did not receive, most often generated ones
  git ignores (a web app's ``dist/``), which a local checkout does not send
  unless ``use_gitignore`` is off;
- ``go vet`` findings (``file.go:L:C: ...``, with no ``vet:`` type error, which
  would be the compiler's failure too, and none of the package loader's errors,
  a missing package or file, which ``go build`` would hit as well): go vet's
  analyzers flag code that ``go build`` and ``go test`` accept (``run_vet``);
- ``go test`` whose tests could not reach a network service (net's ``dial tcp
  ADDR: connect: connection refused``, ``lookup HOST: no such host``, in the test
  output on stdout): the builder runs the tests, not the database or API they
  expect. Such tests can skip under ``testing.Short()`` with ``GOFLAGS=-short``
  in ``go_env`` (a test flag: ``go test`` takes it from GOFLAGS, ``go build`` and
  ``go vet`` ignore it), sit behind a build tag, or ``run_checks`` goes off.

Anything else gets no hint: a wrong hint costs more than none.
"""

from __future__ import annotations

import re

from tasks.ldflags import NOT_A_STRING

_TOO_NEW = re.compile(
    r"^go: (?P<what>.+?) requires go >= (?P<needed>\S+) "
    r"\(running go (?P<running>[^;)\s]+)(?:; GOTOOLCHAIN=[^)]*)?\)",
    re.M,
)
_NEEDS_AUTH = re.compile(
    r"(?:reading https?://\S+|\S+@\S+): (?:401 Unauthorized|403 Forbidden)"
    r"|terminal prompts disabled|could not read Username",
)
_NO_GIT = re.compile(r'exec: "git": executable file not found')
_NO_MODULE = re.compile(
    r"^go: no modules specified|^go: go\.mod file not found in current directory", re.M
)
_NOT_TIDY = re.compile(r"missing go\.sum entry|updates to go\.mod needed")
# A directory the repository's go.work or go.mod names that the source does not
# hold (a local source is refused first, tasks/gomod.py; a git URL's tree is only
# known to the engine).
_LOCAL_MODULE_MISSING = re.compile(
    r"cannot load module (?P<use>\S+) listed in go\.work file"
    r"|\(replaced by (?P<replaced>\S+)\): reading \S+: open \S+: no such file or directory"
    r"|replacement directory (?P<dir>\S+) does not exist"
)
_STALE_VENDOR = re.compile(
    r"^go: inconsistent vendoring in (?s:.*?)run:\s+(?P<fix>go (?:mod|work) vendor)|"
    r"^go: inconsistent vendoring in ",
    re.M,
)
_EXCLUDED = re.compile(r"build constraints exclude all Go files in (?P<dir>\S+)")
_EMBED = re.compile(
    r"pattern (?P<pattern>\S+): (?:no matching files found|cannot embed directory "
    r"\S+: contains no embeddable files)"
)
_NO_MAIN = re.compile(r"^go: no main packages to build", re.M)
_NOT_A_STRING = re.compile(rf"^(?P<var>\S+): {re.escape(NOT_A_STRING)}", re.M)
_VET_FINDING = re.compile(r"^\S+\.go:\d+:\d+: ", re.M)
_VET_TYPE_ERROR = re.compile(r"^vet: ", re.M)
# Go's package loader, which go vet runs first, reports in the same file:line:col
# form as vet's analyzers; go build would fail on these too.
_LOAD_ERROR = re.compile(
    r"cannot find module providing package|no required module provides package"
    r"|is not in std|cannot find package|import cycle not allowed|use of internal package"
    r"|found packages \S+ \(\S+\) and|no such file or directory|no matching files found"
    r"|cannot embed"
)
_UNREACHABLE = re.compile(
    r"dial (?:tcp|udp|unix)[46]? (?P<addr>\S+): connect: connection refused"
    r"|dial (?:tcp|udp)[46]?: lookup (?P<host>\S+)(?: on \S+)?: no such host"
)


def go_hint(
    stderr: str,
    *,
    builder_image: str,
    go_auth_secret_block: str,
    module_dir: str = ".",
    command: list[str] | tuple[str, ...] = (),
    stdout: str = "",
) -> str:
    """The hint for a failed go ``command``, from its ``stderr`` (go's own
    messages) and, for ``go test``, its ``stdout`` (the tests' output); '' when
    none applies."""
    text = stderr or ""
    if m := _TOO_NEW.search(text):
        return (
            f"builder_image {builder_image!r} runs Go {m['running']}, and {m['what']} "
            f"requires go >= {m['needed']}: use a builder image with a newer Go"
        )
    if _NEEDS_AUTH.search(text):
        if go_auth_secret_block:
            return (
                f"the module host refused the credentials of go_auth_secret_block "
                f"{go_auth_secret_block!r}: check its .netrc machine, login and token"
            )
        return (
            "a module needs credentials: set go_auth_secret_block to a Secret block "
            "holding a .netrc for its host, and go_env GOPRIVATE to its path prefix"
        )
    if _NO_GIT.search(text):
        return (
            f"builder_image {builder_image!r} has no git, which Go needs to fetch a module "
            "from its repository (GOPRIVATE, GOPROXY=direct): use a golang image that has "
            "it, such as a -bookworm one"
        )
    if _NO_MODULE.search(text):
        return (
            f"the source has no go.mod in module_dir {module_dir!r}: set module_dir to the "
            "directory of the Go module (the one holding go.mod)"
        )
    if m := _LOCAL_MODULE_MISSING.search(text):
        named = m["use"] or m["replaced"] or m["dir"]
        what = "go.work uses" if m["use"] else "go.mod replaces a module with"
        return (
            f"the source's {what} {named}, which is not in the source the engine received "
            "(it gets the source alone): a module named by a path must be inside it; for a "
            "git URL, committed at that ref, with module_dir pointing at the module"
        )
    if m := _STALE_VENDOR.search(text):
        fix = m["fix"] or "go mod vendor"
        return (
            "vendor/ does not match go.mod, and the build uses vendor/ once its modules.txt "
            f"is sent (-mod=vendor, as go build does): run '{fix}' and commit vendor/, or "
            "leave vendor/ out of the source (a .dockerignore line vendor) to download the "
            "modules instead"
        )
    if _NOT_TIDY.search(text):
        return (
            "go.mod and go.sum are not tidy: run 'go mod tidy' and commit both (the "
            "build reads them with -mod=readonly, as go build does, and never rewrites them)"
        )
    if m := _EXCLUDED.search(text):
        return (
            f"no Go file in {m['dir']} builds for the target platform with CGO_ENABLED=0: "
            'files that import "C" need cgo, which this static build leaves off; '
            "//go:build lines, _GOOS/_GOARCH file names and build_tags decide the rest"
        )
    if m := _EMBED.search(text):
        return (
            f"//go:embed {m['pattern']} found no files in the source the engine received: "
            "a local checkout sends what git would commit, so set use_gitignore to false "
            "for generated files git ignores (.dockerignore then decides alone); a git URL "
            "holds committed files only"
        )
    if m := _NOT_A_STRING.search(text):
        return (
            f"{m['var']} is not a string variable in this program, and -ldflags -X sets "
            "only those: point version_variable (or the -X in ldflags) at a string variable"
        )
    if _NO_MAIN.search(text):
        return (
            "none of extra_packages is a main package (go build -o DIR/ builds main "
            "packages only): name the directories that hold package main"
        )
    if (
        list(command[:2]) == ["go", "vet"]
        and _VET_FINDING.search(text)
        and not _VET_TYPE_ERROR.search(text)
        and not _LOAD_ERROR.search(text)
    ):
        return (
            "go vet reports code that go build and go test accept: fix what it names, or "
            "set run_vet to false to keep go test (which runs vet's high-confidence checks)"
        )
    if list(command[:2]) == ["go", "test"] and (m := _UNREACHABLE.search(stdout or "")):
        return (
            f"the tests could not reach {m['addr'] or m['host']}, a service the builder "
            "does not run: let such tests skip under testing.Short() and set go_env "
            "GOFLAGS to -short, keep them behind a build tag, or set run_checks to false"
        )
    return ""
