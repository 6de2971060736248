"""Module proxies and private modules: ``go_env`` and ``go_auth_secret_block``.

The product tests build through the flow against a Go module proxy on 127.0.0.1
(``tests/goproxy.py``: GOPROXY's static-file protocol over HTTPS), one of whose
modules needs HTTP Basic auth. The credentials come from a Prefect Secret block as
.netrc text; they must reach the builder only as a Dagger secret and nowhere else.

The engine contract tests pin what the compile stage relies on from Dagger's
secret mounts, read from dagger/dagger v0.21.8 and marked ``real_engine``.
"""

from __future__ import annotations

import gzip
import json
import platform
import secrets
import subprocess
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import dagger
import pytest
from dagger import dag
from prefect.blocks.system import Secret

from flows.build import main, parse_args
from tasks.compile import builder, compile_cache_key
from tasks.params import ParamsError, parse_params
from tasks.secrets import CredentialsError, parse_go_auth
from tasks.source import SourceInfo, describe_local, source_directory
from tests.dagger_test_engine.server import TestEngine
from tests.flowruns import artifacts, build, task_runs
from tests.goproxy import GoModuleProxy
from tests.leaks import assert_not_leaked
from tests.oci_check import ELF_AARCH64, elf_machine, extract_file
from tests.prefect_fixtures import PrefectAPI
from tests.real_engine import Engine

GOLANG = "golang:1.27.3-bookworm"
on_x86_64 = pytest.mark.skipif(
    platform.machine() not in ("x86_64", "AMD64"), reason="binaries are run on an x86_64 host"
)

PUBLIC = "example.com/public"
PRIVATE = "example.com/private"


def _module(path: str, package: str, func: str, text: str) -> dict[str, str]:
    return {
        "go.mod": f"module {path}\n\ngo 1.22\n",
        f"{package}.go": f'package {package}\n\nfunc {func}() string {{ return "{text}" }}\n',
    }


@pytest.fixture(scope="module")
def goproxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GoModuleProxy]:
    """The proxy with example.com/public v1.2.0 (open) and example.com/private
    v1.0.0 and v1.1.0 (Basic auth)."""
    proxy = GoModuleProxy(
        tmp_path_factory.mktemp("goproxy"), token="gotok-" + secrets.token_hex(16)
    )
    proxy.add_module(PUBLIC, "v1.2.0", _module(PUBLIC, "public", "Hello", "hello from public"))
    for version in ("v1.0.0", "v1.1.0"):
        proxy.add_module(
            PRIVATE, version, _module(PRIVATE, "private", "Greeting", f"private {version}")
        )
    yield proxy
    proxy.stop()


@pytest.fixture
def proxied_engine(dagger_engine: TestEngine, goproxy: GoModuleProxy) -> Iterator[TestEngine]:
    """The test engine trusting the proxy's CA, as a real engine configured with a
    custom CA would (its execs get the CA; images never do)."""
    dagger_engine.engine.custom_ca_certs = [goproxy.ca_pem]
    yield dagger_engine
    dagger_engine.engine.custom_ca_certs = []


def go_env(proxy: GoModuleProxy) -> dict[str, str]:
    # The private module through the proxy (GONOPROXY=none overrides GOPRIVATE's
    # "fetch directly"); neither module is in the public checksum database.
    return {
        "GOPROXY": proxy.url,
        "GOPRIVATE": PRIVATE,
        "GONOPROXY": "none",
        "GONOSUMDB": "example.com",
    }


MAIN = """package main

import (
\t"fmt"

\t"example.com/private"
\t"example.com/public"
)

var version = "dev"

func main() { fmt.Println(public.Hello(), "and", private.Greeting(), version) }
"""


def app_using_modules(
    proxy: GoModuleProxy, root: Path, private_version: str, extra: dict[str, str] | None = None
) -> Path:
    """A module requiring both, with go.sum written by the real go command
    (``go mod tidy`` against the proxy on this host)."""
    root.mkdir(parents=True)
    (root / "go.mod").write_text(
        f"module example.com/app\n\ngo 1.22\n\nrequire (\n\t{PRIVATE} {private_version}\n"
        f"\t{PUBLIC} v1.2.0\n)\n"
    )
    (root / "main.go").write_text(MAIN)
    for name, text in (extra or {}).items():
        (root / name).write_text(text)
    go_sum = proxy.tidy(root, root.parent / f"{root.name}-gohome")
    assert f"{PRIVATE} {private_version} h1:" in go_sum and f"{PUBLIC} v1.2.0 h1:" in go_sum
    return root


def layer_texts(tarball: Path) -> bytes:
    """Every file of an OCI tarball, gzip layers decompressed."""
    out = []
    with tarfile.open(tarball) as tar:
        for member in tar.getmembers():
            fh = tar.extractfile(member) if member.isfile() else None
            if fh is None:
                continue
            data = fh.read()
            if data[:2] == b"\x1f\x8b":
                data = gzip.decompress(data)
            out.append(data)
    return b"\n".join(out)


def blob_store_holds(engine: TestEngine, needle: bytes) -> bool:
    """Whether any file content the test engine ever snapshotted holds ``needle``."""
    return any(needle in p.read_bytes() for p in engine.engine.store.root.iterdir())


# --- the product, through the flow -------------------------------------------------


@on_x86_64
def test_private_module_from_an_authenticated_proxy_builds_and_runs(
    prefect_api: PrefectAPI,
    proxied_engine: TestEngine,
    goproxy: GoModuleProxy,
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
) -> None:
    app = app_using_modules(goproxy, tmp_path / "modapp", "v1.0.0")
    Secret(value=goproxy.netrc()).save("go-proxy-netrc", overwrite=True)
    out = tmp_path / "modapp.tar"
    state = build(
        source=str(app),
        go_env=go_env(goproxy),
        go_auth_secret_block="go-proxy-netrc",
        version="1.0.0",
        output=str(out),
        platforms=["linux/amd64", "linux/arm64"],
    )
    assert state.is_completed(), state.message
    binary = extract_file(f"oci-archive:{out}", "/usr/local/bin/modapp", tmp_path / "bin", "amd64")
    ran = subprocess.run([str(binary)], capture_output=True, text=True, check=True).stdout
    assert ran == "hello from public and private v1.0.0 1.0.0\n"
    arm64 = extract_file(f"oci-archive:{out}", "/usr/local/bin/modapp", tmp_path / "arm64", "arm64")
    assert elf_machine(arm64) == ELF_AARCH64

    # The private module was served to the credentials, and only to them.
    private = [(status, user) for _, path, status, user in goproxy.requests if PRIVATE in path]
    assert (200, goproxy.username) in private
    assert all(user == goproxy.username for status, user in private if status == 200)
    assert ["go", "mod", "download"] in proxied_engine.log.snapshot()["execs"]

    token = goproxy.token.encode()
    assert token not in layer_texts(out), "token in the image"
    assert not blob_store_holds(proxied_engine, token), "token in a container filesystem"
    assert_not_leaked(
        goproxy.token,
        state,
        prefect_api,
        proxied_engine,
        capfd,
        proxy_log=goproxy.log_text(),
    )


@on_x86_64
def test_private_module_without_credentials_fails_at_once_with_the_go_error(
    prefect_api: PrefectAPI,
    proxied_engine: TestEngine,
    goproxy: GoModuleProxy,
    tmp_path: Path,
) -> None:
    # v1.1.0: a version no earlier build put in the engine's module cache volume.
    app = app_using_modules(goproxy, tmp_path / "lockedapp", "v1.1.0")
    state = build(source=str(app), go_env=go_env(goproxy), output=str(tmp_path / "l.tar"))
    assert state.is_failed()
    exc = state.result(raise_on_failure=False)
    assert isinstance(exc, dagger.ExecError), exc
    assert exc.command == ["go", "mod", "download"]
    assert f"{PRIVATE}/@v/v1.1.0" in exc.stderr and "401 Unauthorized" in exc.stderr
    runs = {r.name: r for r in task_runs(state.state_details.flow_run_id)}
    assert runs["compile linux/amd64"].run_count == 1  # a 401 is final: never retried
    downloads = [e for e in proxied_engine.log.snapshot()["execs"] if e[:3] == exc.command]
    assert len(downloads) == 1
    report = {a.key: a for a in artifacts(state.state_details.flow_run_id) if a.key}
    assert "401 Unauthorized" in report["build-lockedapp-failure"].data
    assert "Hint: a module needs credentials: set go_auth_secret_block" in (
        report["build-lockedapp-failure"].data
    )


@on_x86_64
def test_builds_sharing_a_session_keep_their_own_module_credentials(
    proxied_engine: TestEngine, goproxy: GoModuleProxy, tmp_path: Path
) -> None:
    """Two builds in one engine session (runs overlapping in one process, or under
    ``dagger run``), their credentials from different Secret blocks: the second
    sets its secrets after the first has set its own and before the first runs.
    The engine binds a secret's value to its name for the session
    (test_a_set_secret_is_bound_by_its_name_in_the_session), so with one name for
    both the first build would download with the second's stale password."""
    # A version no other test puts in the module cache volume: the download must
    # reach the proxy, and its credentials matter.
    goproxy.add_module(PRIVATE, "v1.3.0", _module(PRIVATE, "private", "Greeting", "v1.3.0"))
    app = app_using_modules(goproxy, tmp_path / "pairapp", "v1.3.0")
    params = parse_params({"source": str(app), "go_env": go_env(goproxy), "run_checks": False})
    info = describe_local(params)
    current = parse_go_auth(goproxy.netrc(), "proxy-current")
    stale = parse_go_auth(goproxy.netrc(password="stale-" + secrets.token_hex(8)), "proxy-stale")

    async def flow():
        src = source_directory(info)
        first = builder(src, params, auth=current)
        await first.id()  # its secrets are set in the session now; nothing has run
        await builder(src, params, auth=stale).id()
        return await first.with_exec(["go", "list", "-m", PRIVATE]).stdout()

    assert run(flow) == f"{PRIVATE} v1.3.0\n"
    private = [(status, user) for _, path, status, user in goproxy.requests if "v1.3.0" in path]
    assert private and all(status == 200 for status, _ in private)


@on_x86_64
def test_an_untidy_module_fails_once_with_the_hint_to_tidy(
    prefect_api: PrefectAPI,
    proxied_engine: TestEngine,
    goproxy: GoModuleProxy,
    tmp_path: Path,
) -> None:
    """go.sum lost its lines for a requirement: go build (-mod=readonly) refuses,
    in Go's own words, and the hint names the step in the repository."""
    app = app_using_modules(goproxy, tmp_path / "untidy", "v1.0.0")
    go_sum = app / "go.sum"
    go_sum.write_text("".join(ln for ln in go_sum.read_text().splitlines(True) if PUBLIC not in ln))
    Secret(value=goproxy.netrc()).save("go-proxy-netrc", overwrite=True)
    state = build(
        source=str(app),
        go_env=go_env(goproxy),
        go_auth_secret_block="go-proxy-netrc",
        run_checks=False,
        output=str(tmp_path / "u.tar"),
    )
    assert state.is_failed()
    exc = state.result(raise_on_failure=False)
    assert isinstance(exc, dagger.ExecError), exc
    assert "missing go.sum entry" in exc.stderr
    runs = {r.name: r for r in task_runs(state.state_details.flow_run_id)}
    assert runs["compile linux/amd64"].run_count == 1
    report = {a.key: a for a in artifacts(state.state_details.flow_run_id) if a.key}
    assert "Hint: go.mod and go.sum are not tidy: run 'go mod tidy'" in (
        report["build-untidy-failure"].data
    )


LEAKY_TEST = """package main

import (
\t"fmt"
\t"os"
\t"path/filepath"
\t"strings"
\t"testing"
)

// Prints the netrc's password alone, the way a careless debug line would.
func TestPrintsTheToken(t *testing.T) {
\thome, _ := os.UserHomeDir() // /root; the test engine runs this on the host
\tdata, err := os.ReadFile(filepath.Join(home, ".netrc"))
\tif err != nil {
\t\tt.Fatal(err)
\t}
\tf := strings.Fields(string(data))
\tfor i := range f {
\t\tif f[i] == "password" {
\t\t\tfmt.Println("token is", f[i+1])
\t\t\tfmt.Fprintln(os.Stderr, "token is", f[i+1])
\t\t}
\t}
\tt.Fatal("leak-marker-42")
}
"""


@on_x86_64
def test_a_test_that_prints_the_token_fails_with_the_token_scrubbed(
    prefect_api: PrefectAPI,
    proxied_engine: TestEngine,
    goproxy: GoModuleProxy,
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
) -> None:
    app = app_using_modules(goproxy, tmp_path / "leakyapp", "v1.0.0", {"leak_test.go": LEAKY_TEST})
    # The JSON form of the credentials this time.
    value = {"machine": goproxy.host, "login": goproxy.username, "password": goproxy.token}
    Secret(value=json.dumps(value)).save("go-proxy-json", overwrite=True)
    state = build(
        source=str(app),
        go_env=go_env(goproxy),
        go_auth_secret_block="go-proxy-json",
        output=str(tmp_path / "leaky.tar"),
    )
    assert state.is_failed()
    exc = state.result(raise_on_failure=False)
    assert isinstance(exc, dagger.ExecError) and exc.command[:2] == ["go", "test"]
    # The password was mounted alone too, so the engine scrubbed it wherever it
    # appeared, not only as part of the whole .netrc text.
    # (go test ./... passes on the test binary's stdout and stderr as its stdout.)
    assert exc.stdout.count("token is ***") == 2, exc.stdout
    report = {a.key: a for a in artifacts(state.state_details.flow_run_id) if a.key}
    assert "leak-marker-42" in report["build-leakyapp-failure"].data
    assert_not_leaked(
        goproxy.token,
        state,
        prefect_api,
        proxied_engine,
        capfd,
        proxy_log=goproxy.log_text(),
    )


def test_missing_go_auth_block_fails_in_one_line_naming_the_parameter(
    prefect_api: PrefectAPI, dagger_engine: TestEngine, hello_go: Path, tmp_path: Path
) -> None:
    state = build(
        source=str(hello_go),
        go_auth_secret_block="no-such-go-block",
        output=str(tmp_path / "x.tar"),
        force_rebuild=True,
    )
    assert state.is_failed()
    exc = state.result(raise_on_failure=False)
    assert isinstance(exc, CredentialsError)
    assert str(exc) == "go_auth_secret_block: no Secret block named 'no-such-go-block'"


@pytest.mark.parametrize(
    ("go_env", "fragment"),
    [
        ({"GOOS": "plan9"}, "key 'GOOS' is not allowed"),
        ({"GOPROXY": "https://proxy.example\nGOFLAGS=-x"}, "must be one line"),
    ],
    ids=["key", "newline"],
)
def test_bad_go_env_is_rejected_before_engine_work(
    prefect_api: PrefectAPI,
    dagger_engine: TestEngine,
    hello_go: Path,
    go_env: dict[str, str],
    fragment: str,
) -> None:
    state = build(source=str(hello_go), go_env=go_env)
    assert state.is_failed()
    exc = state.result(raise_on_failure=False)
    assert isinstance(exc, ParamsError)
    assert str(exc).startswith("go_env: ") and fragment in str(exc) and "\n" not in str(exc)
    assert dagger_engine.log.snapshot()["requests"] == []


# --- parameters ----------------------------------------------------------------------


@pytest.fixture
def module_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "go.mod").write_text("module example.com/svc\n\ngo 1.24\n")
    (tmp_path / "main.go").write_text("package main\n\nfunc main() {}\n")
    monkeypatch.chdir(tmp_path)
    return tmp_path


Case = Callable[[], dict[str, Any]]
BAD = [
    ({"go_env": {"GOOS": "linux"}}, "go_env", "key 'GOOS' is not allowed; allowed: GOPROXY, "),
    ({"go_env": {"goproxy": "off"}}, "go_env", "(did you mean 'GOPROXY'?)"),
    ({"go_env": {"GONOSUMCHECK": "1"}}, "go_env", "not a Go setting; use GONOSUMDB"),
    ({"go_env": {"GOAUTH": "git /src"}}, "go_env", "go_auth_secret_block"),
    ({"go_env": {"GOPROXY": "https://p.example\nx"}}, "go_env", "GOPROXY must be one line"),
    ({"go_env": {"GOPRIVATE": "a.example\x00"}}, "go_env", "must be one line"),
    ({"go_env": {"GOPRIVATE": "a.example b.example"}}, "go_env", "must not contain spaces"),
    ({"go_env": {"GOFLAGS": "-mod=mod"}}, "go_env", "must not set '-mod=mod'"),
    ({"go_env": {"GOFLAGS": "-tags=x --mod=vendor"}}, "go_env", "must not set '--mod=vendor'"),
    ({"go_env": {"GOFLAGS": "tags=x"}}, "go_env", "'tags=x' is not a flag"),
    ({"go_env": {"GOPROXY": 3}}, "go_env['GOPROXY']", "valid string"),
    ({"go_auth_secret_block": "My_Netrc"}, "go_auth_secret_block", "not a Prefect block name"),
]


@pytest.mark.parametrize(("given", "field", "fragment"), BAD, ids=[b[2][:24] for b in BAD])
def test_bad_go_parameters_give_one_line_naming_field(
    module_dir: Path, given: dict[str, Any], field: str, fragment: str
) -> None:
    with pytest.raises(ParamsError) as caught:
        parse_params(given)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"{field}: "), message
    assert fragment in message, message


def test_credentials_in_a_proxy_url_are_refused_without_echoing_them(module_dir: Path) -> None:
    for value in ("https://bob:s3cr3t-pw@goproxy.corp.example", "https://s3cr3t-pw@goproxy.x,off"):
        with pytest.raises(ParamsError) as caught:
            parse_params({"go_env": {"GOPROXY": value}})
        message = str(caught.value)
        assert message.startswith("go_env: value of GOPROXY embeds credentials"), message
        assert "s3cr3t" not in message and "go_auth_secret_block" in message


def test_go_settings_accepted(module_dir: Path) -> None:
    env = {
        "GOPROXY": "https://goproxy.corp.example|https://proxy.golang.org,direct",
        "GOPRIVATE": "corp.example/*,*.internal.example",
        "GONOPROXY": "none",
        "GONOSUMDB": "corp.example",
        "GOSUMDB": "sum.golang.org+033de0ae+Ac4zctda0e5eza+HJyk9SxEdh+s3Ky0cl9bA= "
        "https://sum.golang.org",
        "GOINSECURE": "legacy.corp.example",
        "GOFLAGS": "-tags=netgo -buildvcs=false",
        "GOVCS": "private:git|hg,public:off",
    }
    params = parse_params({"go_env": env, "go_auth_secret_block": "corp-netrc"})
    assert params.go_env == env and params.go_auth_secret_block == "corp-netrc"
    assert parse_params({}).go_env == {}


def test_cli_flags(module_dir: Path) -> None:
    values = parse_args(
        [
            ".",
            "--go-env",
            "GOPROXY=https://goproxy.corp.example,direct",
            "--go-env",
            "GOFLAGS=-tags=a -buildvcs=false",
            "--go-auth-secret-block",
            "corp-netrc",
        ]
    )
    assert values["go_env"] == {
        "GOPROXY": "https://goproxy.corp.example,direct",
        "GOFLAGS": "-tags=a -buildvcs=false",
    }
    assert parse_params(values).go_auth_secret_block == "corp-netrc"


def test_cli_rejects_bad_go_env_in_one_line(
    module_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([".", "--go-env", "GOARCH=arm64"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: go_env: key 'GOARCH' is not allowed") and err.count("\n") == 1


def test_compile_cache_key_covers_go_env_but_not_credentials(module_dir: Path) -> None:
    source = SourceInfo(kind="local", location=str(module_dir), digest="sha256:" + "0" * 64)

    def key(**given: Any) -> str:
        params = parse_params({"source": str(module_dir), **given})
        inputs = {"source": source, "params": params, "platform": "linux/amd64", "version": "1"}
        return compile_cache_key(None, inputs)  # type: ignore[arg-type]

    base = key()
    assert key(go_env={"GOFLAGS": "-tags=netgo"}) != base
    assert key(go_env={"GOPROXY": "https://goproxy.corp.example"}) != base
    assert key(go_auth_secret_block="corp-netrc") == base


# --- credentials from the Secret block -----------------------------------------------


def test_netrc_text_json_and_lists_are_accepted() -> None:
    netrc = "machine goproxy.corp.example:8443\n  login ci\n  password tok1\n"
    assert parse_go_auth(netrc, "b").netrc() == (
        "machine goproxy.corp.example:8443 login ci password tok1\n"
    )
    two = "machine a.example login u password p1 machine b.example login v password p2"
    assert [e.machine for e in parse_go_auth(two, "b").entries] == ["a.example", "b.example"]
    as_json = '{"host": "https://goproxy.corp.example/", "username": "ci", "token": "tok2"}'
    assert parse_go_auth(as_json, "b").netrc() == (
        "machine goproxy.corp.example login ci password tok2\n"
    )
    listed = [
        {"machine": "a.example", "login": "u", "password": "p1"},
        {"machine": "b.example", "login": "v", "password": "p2"},
    ]
    auth = parse_go_auth(listed, "b")
    assert len(auth.entries) == 2
    assert "p1" not in repr(auth) and "p1" not in repr(auth.entries[0])


@pytest.mark.parametrize(
    "value",
    [
        "just-a-token-123",
        "machine a.example login u",
        '{"machine": "a.example", "token": "just-a-token-123"}',
        [{"machine": "a.example", "login": "u", "password": "just-a-token-123"}, "x"],
        {"machine": "a.example", "login": "u", "password": "just a-token-123"},
        {"machine": "a b", "login": "u", "password": "just-a-token-123"},
        42,
    ],
    ids=["bare", "no-password", "no-login", "list-junk", "space-password", "space-host", "int"],
)
def test_unusable_credentials_are_refused_without_echoing_them(value: object) -> None:
    with pytest.raises(CredentialsError) as caught:
        parse_go_auth(value, "corp-netrc")
    message = str(caught.value)
    assert message.startswith("go_auth_secret_block: secret 'corp-netrc'"), message
    assert "token-123" not in message


# --- the engine: secret mounts, scrubbing, the test engine's GOPROXY ------------------

PROBE = """package main

import (
\t"fmt"
\t"os"
\t"path/filepath"
\t"strings"
)

// For each argument: a file's mode and content, or env:NAME's value.
func main() {
\tfor _, arg := range os.Args[1:] {
\t\tif name, ok := strings.CutPrefix(arg, "env:"); ok {
\t\t\tfmt.Printf("%s=%s\\n", name, os.Getenv(name))
\t\t\tcontinue
\t\t}
\t\tinfo, err := os.Stat(arg)
\t\tif err != nil {
\t\t\tfmt.Printf("%s missing\\n", filepath.Base(arg))
\t\t\tcontinue
\t\t}
\t\tdata, _ := os.ReadFile(arg)
\t\tfmt.Printf("%s %v %s\\n", filepath.Base(arg), info.Mode().Perm(), data)
\t}
\tif os.Getenv("PROBE_FAIL") != "" {
\t\tfmt.Fprintln(os.Stderr, "failing after printing")
\t\tos.Exit(3)
\t}
}
"""


def run(coro_fn, *args):
    async def go():
        async with dagger.connection(dagger.Config(retry=None)):
            return await coro_fn(*args)

    return anyio.run(go)


def probe_container() -> dagger.Container:
    return (
        dag.container()
        .from_(GOLANG)
        .with_mounted_cache("/root/.cache/go-build", dag.cache_volume("go-build"))
        .with_env_variable("CGO_ENABLED", "0")
        .with_new_file("/probe/main.go", PROBE)
        .with_workdir("/probe")
    )


@pytest.mark.real_engine
def test_mounted_secret_is_seen_by_execs_only(dagger_engine: Engine) -> None:
    """core/schema/container.go withMountedSecret (mode defaults to 0400) ->
    core/container.go WithMountedSecret appends to ``container.Secrets``, not to
    the rootfs; core/container_exec.go (~888-907) mounts each secret for an exec
    only; internal/buildkit/executor/stubs.go removes the mount point stubs
    afterwards. So the secret is there during every later exec and in no
    filesystem result (``file``, ``directory``, an export), and the secret
    variable is in the exec's environment but not in ``envVariables``."""
    value = "s3cret-" + secrets.token_hex(8)

    async def flow():
        ctr = (
            probe_container()
            .with_mounted_secret("/probe/secret.txt", dag.set_secret("probe-file", value))
            .with_secret_variable("PROBE_TOKEN", dag.set_secret("probe-env", "envtok-" + value))
            .with_exec(["go", "run", "main.go", "/probe/secret.txt", "env:PROBE_TOKEN"])
        )
        stdout = await ctr.stdout()
        entries = await ctr.directory("/probe").entries()
        names = [await v.name() for v in await ctr.env_variables()]
        mounts = await ctr.mounts()  # core/container.go MountTargets: Mounts only
        try:
            await ctr.file("/probe/secret.txt").contents()
            read_back = True
        except dagger.QueryError:
            read_back = False
        removed = (
            await ctr.without_mount("/probe/secret.txt")
            .with_exec(["go", "run", "main.go", "/probe/secret.txt"])
            .stdout()
        )
        return stdout, entries, names, mounts, read_back, removed

    stdout, entries, names, mounts, read_back, removed = run(flow)
    # The values were printed, and the engine scrubbed them.
    assert stdout == "secret.txt -r-------- ***\nPROBE_TOKEN=***\n"
    assert entries == ["main.go"]
    assert "PROBE_TOKEN" not in names
    assert mounts == ["/root/.cache/go-build"]
    assert not read_back
    assert removed == "secret.txt missing\n"


@pytest.mark.real_engine
def test_a_set_secret_is_bound_by_its_name_in_the_session(dagger_engine: Engine) -> None:
    """core/schema/secret.go setSecret: each call is a new result (PerCallInput)
    whose handle comes from the name alone (core/secret.go SetSecretHandle), and
    the plaintext is bound to that handle in the session, the latest binding
    winning (dagql/cache.go BindSessionResource). So a secret already made yields
    the value of a later ``setSecret`` of the same name: two builds sharing a
    session must not give different values one name (tasks/secrets.py
    ``secret_name``)."""
    tag = secrets.token_hex(4)

    async def flow():
        first_id = await dag.set_secret(f"probe-{tag}", "one").id()
        first = dag.load_secret_from_id(dagger.SecretID(first_id))
        before = await first.plaintext()
        second_id = await dag.set_secret(f"probe-{tag}", "two").id()
        other_id = await dag.set_secret(f"probe-other-{tag}", "three").id()
        return (
            before,
            await first.plaintext(),
            await dag.load_secret_from_id(dagger.SecretID(second_id)).plaintext(),
            await dag.load_secret_from_id(dagger.SecretID(other_id)).plaintext(),
            await first.name(),
            first_id != second_id,
        )

    assert run(flow) == ("one", "two", "two", "three", f"probe-{tag}", True)


@pytest.mark.real_engine
def test_exec_output_is_scrubbed_of_whole_secret_values_only(dagger_engine: Engine) -> None:
    """engine/engineutil/executor_spec.go setupSecretScrubbing wraps the exec's
    stdout/stderr after setupStdio, so the meta files that ``stdout``/``stderr``
    and the EXEC_ERROR extensions (core/exec_error.go) are read from are scrubbed.
    engine/engineutil/secret_scrub.go replaces each secret's whole value (and its
    whitespace-trimmed form) with ``***``: a password inside a mounted .netrc is
    not scrubbed on its own, which is why the compile stage mounts each password
    as a secret of its own as well."""
    password = "pw-" + secrets.token_hex(8)
    netrc = f"machine goproxy.example login ci password {password}\n"

    async def flow():
        ctr = (
            probe_container()
            .with_mounted_secret("/probe/netrc", dag.set_secret("probe-netrc", netrc))
            .with_new_file("/probe/part.txt", password)
            .with_env_variable("PROBE_FAIL", "1")
            .with_exec(["go", "run", "main.go", "/probe/netrc", "/probe/part.txt"])
        )
        try:
            await ctr.sync()
        except dagger.ExecError as exc:
            return exc
        raise AssertionError("the probe should have failed")

    exc = run(flow)
    assert exc.exit_code != 0
    lines = exc.stdout.splitlines()
    assert lines[0] == "netrc -r-------- ***"  # the whole file's text, trimmed
    assert lines[1] == f"part.txt -rw-r--r-- {password}"  # a part alone is not a secret
    assert "failing after printing" in exc.stderr


def test_test_engine_is_offline_unless_the_pipeline_names_a_loopback_proxy(
    dagger_engine: TestEngine,
) -> None:
    async def goproxy(value: str | None) -> str:
        ctr = dag.container().from_(GOLANG)
        if value is not None:
            ctr = ctr.with_env_variable("GOPROXY", value)
        return await ctr.with_exec(["go", "env", "GOPROXY"]).stdout()

    assert run(goproxy, None) == "off\n"
    assert run(goproxy, "https://127.0.0.1:9,off") == "https://127.0.0.1:9,off\n"
    with pytest.raises(dagger.ExecError) as caught:
        run(goproxy, "https://proxy.golang.org,direct")
    assert "not on a loopback address" in caught.value.stderr
