"""Contract of the Dagger test engine's images with the REAL engine (dagger v0.21.8).

Each test names the source of the real engine (or of the library it calls) that
it follows; where the test engine and that source disagree, the source wins. API
behaviours are driven through the real dagger-io SDK; the pure rules the engine
borrows from libraries (containerd's ``platforms.Only``, distribution's
``ParseNormalizedNamed``) are also checked directly against their own test tables.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import anyio
import dagger
import pytest
from dagger import dag

from tests.dagger_test_engine.images import parse_normalized_named
from tests.dagger_test_engine.oci import only, parse_specifier
from tests.dagger_test_engine.server import TestEngine
from tests.real_engine import Engine
from tests.registry_fixtures import Registry, push_base

ALPINE = "alpine:3.22.2"
INDEX = "application/vnd.oci.image.index.v1+json"
MANIFEST = "application/vnd.oci.image.manifest.v1+json"
REF_NAME = "org.opencontainers.image.ref.name"


def run(coro_fn, *args):
    async def main():
        async with dagger.connection(dagger.Config(retry=None)):
            return await coro_fn(*args)

    return anyio.run(main)


class Layout:
    """An exported tarball, read with nothing but tarfile and json."""

    def __init__(self, path: Path) -> None:
        self.path = path
        with tarfile.open(path) as tar:
            self.members = {
                m.name: (tar.extractfile(m).read() if m.isfile() else None)  # type: ignore[union-attr]
                for m in tar.getmembers()
            }

    def json(self, name: str) -> Any:
        data = self.members[name]
        assert data is not None, name
        return json.loads(data)

    def blob(self, digest: str) -> Any:
        return self.json("blobs/sha256/" + digest.removeprefix("sha256:"))

    @property
    def root(self) -> dict:
        [root] = self.json("index.json")["manifests"]
        return root

    def manifests(self) -> list[dict]:
        """The per-platform manifest descriptors, in index order."""
        root = self.root
        return self.blob(root["digest"])["manifests"] if root["mediaType"] == INDEX else [root]

    def config(self, manifest_desc: dict) -> dict:
        return self.blob(self.blob(manifest_desc["digest"])["config"]["digest"])

    def layer(self, manifest_desc: dict) -> dict[str, tarfile.TarInfo]:
        """The entries of the image's layers, an upper layer's winning: a real
        engine's image also has the base image's layers, and may add one layer per
        change (the test engine writes one)."""
        entries: dict[str, tarfile.TarInfo] = {}
        for layer in self.blob(manifest_desc["digest"])["layers"]:
            data = self.members["blobs/sha256/" + layer["digest"].removeprefix("sha256:")]
            with tarfile.open(fileobj=io.BytesIO(data or b"")) as tar:
                entries.update((m.name.removeprefix("./"), m) for m in tar.getmembers())
        return entries


def marked(platform: str, text: str = "") -> dagger.Container:
    """A container of ``platform`` whose /platform.txt says which one it is."""
    return (
        dag.container(platform=dagger.Platform(platform))
        .from_(ALPINE)
        .with_new_file("/platform.txt", text or platform)
        .with_env_variable("MARK", text or platform)
    )


def export_variants(dest: Path, platforms: list[str]) -> Path:
    """Export ``platforms`` (in the given order) from an empty container, as Dagger's
    own TestMultiPlatformExport does: the empty receiver is not an image."""

    async def go():
        variants = [marked(p) for p in platforms]
        return await dag.container().export(str(dest), platform_variants=variants)

    assert run(go) == str(dest)
    return dest


def import_as(tarball: Path, platform: str, tag: str = "") -> tuple[str, str, str | None]:
    async def go():
        ctr = dag.container(platform=dagger.Platform(platform)).import_(
            dag.host().file(str(tarball)), tag=tag
        )
        return (
            await ctr.platform(),
            await ctr.file("/platform.txt").contents(),
            await ctr.env_variable("MARK"),
        )

    return run(go)


# --- 1. export shape ---------------------------------------------------------------


@pytest.mark.real_engine
def test_single_platform_export_root_is_the_manifest_without_platform(
    dagger_engine: Engine, tmp_path: Path
) -> None:
    """engine/engineutil/imageexport/writer.go ~117-146: with one platform the root
    descriptor is the manifest, no ``platform``. containerimage.go
    WriteContainerImageTarball passes it to containerd's archive exporter without a
    name (``archiveexporter.WithManifest(exported.RootDesc)``), which writes it to
    index.json unchanged: no ``org.opencontainers.image.ref.name``; manifests carry
    only the container's annotations (none here). A one-platform archive has a Docker
    ``manifest.json`` and the file is 0600 (core/integration/container_test.go
    TestExport)."""
    dest = tmp_path / "one.tar"
    export_variants(dest, ["linux/arm64"])
    layout = Layout(dest)
    root = layout.root
    assert root["mediaType"] == MANIFEST
    assert "platform" not in root
    assert "annotations" not in root  # no ref.name: the engine names nothing
    assert "annotations" not in layout.blob(root["digest"])
    assert layout.config(root)["architecture"] == "arm64"
    [docker] = layout.json("manifest.json")
    assert docker["Config"] == "blobs/sha256/" + layout.blob(root["digest"])["config"]["digest"][7:]
    assert dest.stat().st_mode & 0o777 == 0o600


@pytest.mark.real_engine
def test_multi_platform_export_sorts_manifests_by_platform(
    dagger_engine: Engine, tmp_path: Path
) -> None:
    """engine/engineutil/containerimage.go ~67-69 sorts the inputs by platform string
    before imageexport/writer.go ~160-210 builds the index; each manifest descriptor
    has ``platform``, the index descriptor in index.json has none, and there is no
    manifest.json (core/integration/container_test.go TestMultiPlatformExport)."""
    dest = tmp_path / "multi.tar"
    given = ["linux/arm64", "linux/arm/v7", "linux/amd64", "linux/386", "linux/arm/v6"]
    export_variants(dest, given)
    layout = Layout(dest)
    assert layout.root["mediaType"] == INDEX
    assert "platform" not in layout.root and "annotations" not in layout.root
    assert "manifest.json" not in layout.members
    got = [
        "/".join(filter(None, (p["os"], p["architecture"], p.get("variant"))))
        for p in (m["platform"] for m in layout.manifests())
    ]
    assert got == ["linux/386", "linux/amd64", "linux/arm/v6", "linux/arm/v7", "linux/arm64"]
    for desc in layout.manifests():
        config = layout.config(desc)
        assert config["architecture"] == desc["platform"]["architecture"]
        assert config.get("variant") == desc["platform"].get("variant")


@pytest.mark.real_engine
def test_empty_container_alone_is_not_an_image(dagger_engine: Engine, tmp_path: Path) -> None:
    """core/container.go ~6425-6495: ``filterEmptyContainers`` drops containers with
    no rootfs; with none left, "no containers to export"."""

    async def go():
        return await dag.container().export(str(tmp_path / "none.tar"))

    with pytest.raises(dagger.QueryError, match="no containers to export"):
        run(go)


# --- 2. import ---------------------------------------------------------------------


@pytest.mark.real_engine
@pytest.mark.parametrize(
    ("in_tarball", "container", "imported"),
    [
        (["linux/386", "linux/amd64"], "linux/amd64", "linux/386"),
        (["linux/arm/v6", "linux/arm/v7"], "linux/arm/v7", "linux/arm/v6"),
        (["linux/arm/v7", "linux/arm64"], "linux/arm64", "linux/arm/v7"),
        (["linux/amd64", "linux/arm64"], "linux/arm64", "linux/arm64"),
        (["linux/386", "linux/amd64"], "linux/386", "linux/386"),
    ],
)
def test_import_takes_the_first_manifest_platforms_only_accepts(
    dagger_engine: Engine, tmp_path: Path, in_tarball: list[str], container: str, imported: str
) -> None:
    """core/container.go resolveIndex ~6896-6950: walk the index in order, skip a
    descriptor whose platform ``platforms.Only(containerPlatform)`` rejects, take the
    FIRST match. ``Only`` is not exact (containerd/platforms compare.go
    ``platformVector``: amd64 also runs 386, arm/v7 runs v6 and v5, arm64 runs arm
    v8..v5), and the index is sorted by platform string, so e.g. amd64 next to 386
    imports 386. The container then has the image config's platform
    (core/container_image.go ~222-225)."""
    tarball = export_variants(tmp_path / "multi.tar", in_tarball)
    platform, marker, env = import_as(tarball, container)
    assert (platform, marker, env) == (imported, imported, imported)


@pytest.mark.real_engine
def test_import_of_single_platform_tarball_takes_the_configs_platform(
    dagger_engine: Engine, tmp_path: Path
) -> None:
    """A one-platform export's descriptor has no platform (writer.go ~117-146), and
    resolveIndex (core/container.go ~6926-6930) only checks descriptors that have
    one: the image imports into a container of ANY platform, which then takes the
    config's platform and config: Env, Entrypoint, Cmd, User, WorkingDir, Labels
    (core/container_image.go ~222-226 ``container.Config = loaded.Config.Config``)."""
    dest = tmp_path / "arm.tar"

    async def build():
        ctr = (
            marked("linux/arm64")
            .with_entrypoint(["/bin/app"])
            .with_default_args(["serve"])
            .with_user("65532")
            .with_workdir("/srv")
            .with_label("team", "go")
        )
        return await ctr.export(str(dest))

    run(build)

    async def go():
        ctr = dag.container(platform=dagger.Platform("linux/amd64")).import_(
            dag.host().file(str(dest))
        )
        return (
            await ctr.platform(),
            await ctr.env_variable("MARK"),
            await ctr.entrypoint(),
            await ctr.default_args(),
            await ctr.user(),
            await ctr.workdir(),
            await ctr.label("team"),
            await ctr.file("/platform.txt").contents(),
        )

    assert run(go) == (
        "linux/arm64",
        "linux/arm64",
        ["/bin/app"],
        ["serve"],
        "65532",
        "/srv",
        "go",
        "linux/arm64",
    )


@pytest.mark.real_engine
def test_import_without_a_match_fails_like_the_engine(
    dagger_engine: Engine, tmp_path: Path
) -> None:
    """core/container.go ~6947: ``no manifest for platform %s and tag %s``, wrapped
    as "resolve imported image manifest" (core/container_image.go ~200)."""
    tarball = export_variants(tmp_path / "multi.tar", ["linux/amd64", "linux/arm64"])
    with pytest.raises(dagger.QueryError) as info:
        import_as(tarball, "linux/s390x")
    message = str(info.value)
    expected = "resolve imported image manifest: no manifest for platform linux/s390x and tag "
    assert expected in message, message
    # A tag must equal the descriptor's ref-name annotation; the engine's own
    # exports have none (see the export tests), so any tag fails on them.
    with pytest.raises(dagger.QueryError, match="no manifest for platform linux/amd64 and tag v1"):
        import_as(tarball, "linux/amd64", tag="v1")


@pytest.mark.real_engine
def test_import_tag_selects_by_ref_name_annotation(dagger_engine: Engine, tmp_path: Path) -> None:
    """core/container.go ~6932-6941: with ``tag`` set, a descriptor is taken only if
    its ``org.opencontainers.image.ref.name`` annotation equals the tag; without a
    tag the first acceptable one wins."""
    parts = {}
    for name in ("a", "b"):
        dest = tmp_path / f"{name}.tar"

        async def build(dest=dest, name=name):
            return await marked("linux/amd64", text=name).export(str(dest))

        run(build)
        parts[name] = Layout(dest)
    # One layout holding both images, each under its ref name (as `skopeo copy
    # ... oci-archive:x:a` or BuildKit's oci exporter with a name would write it).
    combined = tmp_path / "both.tar"
    with tarfile.open(combined, "w") as tar:
        members: dict[str, bytes | None] = {}
        descriptors = []
        for name, layout in parts.items():
            members.update(layout.members)
            descriptors.append({**layout.root, "annotations": {REF_NAME: name}})
        members["index.json"] = json.dumps(
            {"schemaVersion": 2, "mediaType": INDEX, "manifests": descriptors}
        ).encode()
        members.pop("manifest.json")
        for member_name, data in sorted(members.items()):
            info = tarfile.TarInfo(member_name)
            if data is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    assert import_as(combined, "linux/amd64", tag="b")[1] == "b"
    assert import_as(combined, "linux/amd64", tag="a")[1] == "a"
    assert import_as(combined, "linux/amd64")[1] == "a"
    with pytest.raises(dagger.QueryError, match="no manifest for platform linux/amd64 and tag c"):
        import_as(combined, "linux/amd64", tag="c")


@pytest.mark.real_engine
def test_annotations_reach_the_manifests_and_an_import_drops_them(
    dagger_engine: Engine, tmp_path: Path
) -> None:
    """core/container.go ``WithAnnotation`` appends (a repeated key twice),
    ``WithoutAnnotation`` removes the first entry of a key; ``FromCanonicalRef``
    replaces the rootfs, not the annotations, so ``from`` after ``withAnnotation``
    keeps them. engine/engineutil/containerimage.go ~39-44 puts them in a map (the
    last of a key wins) for both the manifest and its descriptor in the index
    (imageexport/writer.go ~258-292); the index itself gets none. An import
    (core/container_image.go ``Import``, ``FromOCIStore``) sets no annotations, so
    the imported container exports without them."""
    dest = tmp_path / "annotated.tar"

    async def export() -> None:
        def annotated(platform: str) -> dagger.Container:
            return (
                dag.container(platform=dagger.Platform(platform))
                .with_annotation("org.example.kept", "before from")
                .from_(ALPINE)
                .with_new_file("/platform.txt", platform)
                .with_annotation("org.example.twice", "first")
                .with_annotation("org.example.twice", "second")
                .with_annotation("org.example.gone", "x")
                .with_annotation("org.example.doubled", "1")
                .with_annotation("org.example.doubled", "2")
                .without_annotation("org.example.gone")
                .without_annotation("org.example.doubled")  # the first of two only
            )

        variants = [annotated(p) for p in ("linux/amd64", "linux/arm64")]
        await variants[0].export(str(dest), platform_variants=variants[1:])

    run(export)
    layout = Layout(dest)
    expected = {
        "org.example.doubled": "2",
        "org.example.kept": "before from",
        "org.example.twice": "second",
    }
    assert "annotations" not in layout.root
    assert "annotations" not in layout.blob(layout.root["digest"])  # the index
    for desc in layout.manifests():
        assert desc["annotations"] == expected
        assert layout.blob(desc["digest"])["annotations"] == expected

    again = tmp_path / "imported.tar"

    async def reexport() -> None:
        ctr = dag.container(platform=dagger.Platform("linux/amd64")).import_(
            dag.host().file(str(dest))
        )
        await ctr.export(str(again))

    run(reexport)
    imported = Layout(again)
    assert "annotations" not in imported.root
    assert "annotations" not in imported.blob(imported.root["digest"])


# containerd/platforms v1.0.0-rc.2 compare_test.go TestOnly (the Linux rows, and the
# Windows rows that only differ by OS): platform -> (accepted, rejected).
ONLY_TABLE = {
    "linux/amd64": (
        ["linux/amd64", "linux/386"],
        ["linux/amd64/v2", "linux/arm/v7", "linux/arm64", "windows/amd64", "windows/arm"],
    ),
    "linux/amd64/v2": (
        ["linux/amd64", "linux/amd64/v1", "linux/amd64/v2", "linux/386"],
        ["linux/amd64/v3", "linux/amd64/v4", "linux/arm/v7", "linux/arm64", "windows/amd64"],
    ),
    "linux/386": (["linux/386"], ["linux/amd64", "linux/arm/v7", "linux/arm64", "windows/amd64"]),
    "linux/arm/v8": (
        ["linux/arm", "linux/arm/v5", "linux/arm/v6", "linux/arm/v7", "linux/arm/v8"],
        ["linux/amd64", "linux/arm/v4", "linux/arm64", "windows/amd64", "windows/arm"],
    ),
    "linux/arm/v7": (
        ["linux/arm", "linux/arm/v5", "linux/arm/v6", "linux/arm/v7"],
        ["linux/amd64", "linux/arm/v4", "linux/arm/v8", "linux/arm64", "windows/arm"],
    ),
    "linux/arm/v6": (
        ["linux/arm/v5", "linux/arm/v6"],
        ["linux/amd64", "linux/arm", "linux/arm/v4", "linux/arm/v7", "linux/arm/v8"],
    ),
    "linux/arm/v5": (["linux/arm/v5"], ["linux/arm", "linux/arm/v4", "linux/arm/v6"]),
    "linux/arm/v4": (["linux/arm/v4"], ["linux/arm", "linux/arm/v5", "linux/arm/v6"]),
    "linux/arm64/v9.6": (
        [
            "linux/arm",
            *(f"linux/arm/v{v}" for v in (5, 6, 7, 8)),
            "linux/arm64",
            "linux/arm64/v8",
            *(f"linux/arm64/v8.{m}" for m in range(1, 10)),
            "linux/arm64/v9",
            *(f"linux/arm64/v9.{m}" for m in range(0, 7)),
        ],
        ["linux/amd64", "linux/arm/v4", "windows/amd64", "windows/arm", "linux/arm64/v8.10"],
    ),
    "linux/arm64/v9": (
        [
            "linux/arm",
            *(f"linux/arm/v{v}" for v in (5, 6, 7, 8)),
            "linux/arm64",
            "linux/arm64/v8",
            *(f"linux/arm64/v8.{m}" for m in range(1, 6)),
            "linux/arm64/v9",
            "linux/arm64/v9.0",
        ],
        ["linux/amd64", "linux/arm/v4", "windows/amd64", "windows/arm", "linux/arm64/v8.6"],
    ),
    "linux/arm64/v8.1": (
        [
            "linux/arm",
            *(f"linux/arm/v{v}" for v in (5, 6, 7, 8)),
            "linux/arm64",
            "linux/arm64/v8",
            "linux/arm64/v8.1",
        ],
        ["linux/amd64", "linux/arm/v4", "linux/arm/v9", "linux/arm64/v9", "windows/arm"],
    ),
    "linux/arm64": (
        [
            "linux/arm",
            *(f"linux/arm/v{v}" for v in (5, 6, 7, 8)),
            "linux/arm64",
            "linux/arm64/v8",
        ],
        ["linux/amd64", "linux/arm/v4", "linux/arm/v9", "linux/arm64/v9", "windows/arm"],
    ),
}


@pytest.mark.parametrize("platform", sorted(ONLY_TABLE))
def test_platforms_only_matches_containerds_table(platform: str) -> None:
    """containerd/platforms v1.0.0-rc.2 (pinned by dagger v0.21.8's go.mod):
    compare.go ``Only``/``platformVector``, platforms.go ``Parse``/``Normalize``; the
    cases are compare_test.go TestOnly's. This is the matcher resolveIndex uses."""
    accepted, rejected = ONLY_TABLE[platform]
    match = only(parse_specifier(platform))
    assert [p for p in accepted if not match(parse_specifier(p))] == []
    assert [p for p in rejected if match(parse_specifier(p))] == []


# --- 3. publish --------------------------------------------------------------------


def test_publish_of_two_variants_of_one_platform_fails(
    dagger_engine: TestEngine, registry: Registry, tmp_path: Path
) -> None:
    """core/container.go ~6448-6455 (getVariantRefs): ``duplicate platform %q``.
    (The engine checks while goroutines fill its map, so it can miss a duplicate and
    keep one variant; the test engine always fails, which is the safe side.)"""

    async def go(what: str):
        a, b = marked("linux/amd64", "a"), marked("linux/amd64", "b")
        if what == "publish":
            return await a.publish(f"{registry.host}/dup/app:1", platform_variants=[b])
        return await a.export(str(tmp_path / "dup.tar"), platform_variants=[b])

    for what in ("publish", "export"):
        with pytest.raises(dagger.QueryError, match='duplicate platform "linux/amd64"'):
            run(go, what)


@pytest.mark.real_engine
def test_publish_returns_the_normalised_name_with_the_pushed_digest(
    dagger_engine: Engine, registry: Registry, tmp_path: Path
) -> None:
    """core/container.go ~6400-6410: the answer is
    ``reference.WithDigest(reference.ParseNormalizedNamed(ref), rootDigest).String()``;
    a registry with a port is already a domain and stays as written. The digest is
    the one the registry received (``resp.RootDesc.Digest``), which is not promised
    to equal an exported tarball's."""
    port = registry.host.rsplit(":", 1)[1]

    async def go():
        ctr = marked("linux/amd64", "pub")
        return (
            await ctr.publish(f"{registry.host}/team/app:1"),
            await ctr.publish(f"localhost:{port}/team/app:2"),
        )

    first, second = run(go)
    assert first == f"{registry.host}/team/app:1@{registry.manifest('team/app', '1')[0]}"
    assert second == f"localhost:{port}/team/app:2@{registry.manifest('team/app', '2')[0]}"


@pytest.mark.parametrize(
    ("ref", "full"),
    [
        # distribution/reference v0.6.0 normalize_test.go TestParseRepositoryInfo
        ("fooo/bar", "docker.io/fooo/bar"),
        ("index.docker.io/fooo/bar", "docker.io/fooo/bar"),
        ("ubuntu", "docker.io/library/ubuntu"),
        ("library/ubuntu", "docker.io/library/ubuntu"),
        ("docker.io/foo", "docker.io/library/foo"),
        ("index.docker.io/library/ubuntu-12.04-base", "docker.io/library/ubuntu-12.04-base"),
        ("library/foo/bar", "docker.io/library/foo/bar"),
        ("localhost/fooo/bar", "localhost/fooo/bar"),
        ("LOCALDOMAIN/fooo", "LOCALDOMAIN/fooo"),
        ("Foo/bar", "Foo/bar"),
        ("127.0.0.1:8000/privatebase", "127.0.0.1:8000/privatebase"),
        ("example.com:8000/private/moonbase", "example.com:8000/private/moonbase"),
        # TestParseReferenceWithTagAndDigest
        (
            "busybox:latest@sha256:86e0e091d0da6bde2456dbb48306f3956bbeb2eae1b5b9a43045843f69fe4aaa",
            "docker.io/library/busybox:latest"
            "@sha256:86e0e091d0da6bde2456dbb48306f3956bbeb2eae1b5b9a43045843f69fe4aaa",
        ),
        ("team/app:1", "docker.io/team/app:1"),
        ("localhost:5000/a:1", "localhost:5000/a:1"),
        ("[fc00::1]:5000/docker/docker", "[fc00::1]:5000/docker/docker"),
    ],
)
def test_parse_normalized_named_string(ref: str, full: str) -> None:
    """github.com/distribution/reference v0.6.0 (dagger v0.21.8's go.mod):
    normalize.go ParseNormalizedNamed/splitDockerDomain; ``String()`` is the FULL
    name (docker.io/, and library/ for one-component Hub names); only ``Familiar``
    would strip them, and the engine does not call it."""
    assert str(parse_normalized_named(ref)) == full
    pushed = "sha256:" + "b" * 64
    name = full.split("@")[0]
    assert parse_normalized_named(ref).with_digest(pushed) == f"{name}@{pushed}"


@pytest.mark.parametrize(
    "ref",
    [
        # normalize_test.go TestValidateReferenceName (invalid ones)
        "https://github.com/docker/docker",
        "docker/Docker",
        "-docker",
        "-docker/docker",
        "-docker.io/docker/docker",
        "docker///docker",
        "docker.io/docker/Docker",
        "[fc00::1]",
        "fc00::1:5000/debian",
        "1a3f5e7d9c1b3a5f7e9d1c3b5a7f9e1d3c5b7a9f1e3d5d7c9b1a3f5e7d9c1b3a",
    ],
)
def test_parse_normalized_named_rejects(ref: str) -> None:
    """normalize_test.go TestValidateReferenceName: these do not parse."""
    with pytest.raises(ValueError):
        parse_normalized_named(ref)


# --- 4. timestamps -----------------------------------------------------------------


def host_app(root: Path, mtime: int) -> Path:
    root.mkdir()
    (root / "app.txt").write_text("same bytes\n")
    os.utime(root / "app.txt", (mtime, mtime))
    os.utime(root, (mtime, mtime))
    return root


@pytest.mark.real_engine
def test_host_mtimes_reach_the_layer_and_the_digest(dagger_engine: Engine, tmp_path: Path) -> None:
    """engine/client/filesync.go ~134-138 (normalizeLocalImportStat) resets only
    uid, gid and xattrs of synced host files: the mtime travels into the snapshot and
    so into the layer tar (containerd pkg/archive/tar.go ~593-598 keeps it, truncated
    to seconds). Equal bytes with other mtimes are another layer, another image."""
    t1, t2 = 1_600_000_000, 1_650_000_000
    a, b = host_app(tmp_path / "a", t1), host_app(tmp_path / "b", t2)
    single = tmp_path / "single"
    single.mkdir()
    (single / "one.txt").write_text("x\n")
    os.utime(single / "one.txt", (t2 + 7, t2 + 7))

    async def go():
        out = []
        for src in (a, b):
            dest = tmp_path / f"{src.name}.tar"
            ctr = (
                marked("linux/amd64", "t")
                .with_directory("/srv", dag.host().directory(str(src)))
                .with_file("/one.txt", dag.host().file(str(single / "one.txt")))
            )
            await ctr.export(str(dest))
            out.append(dest)
        return out

    a_tar, b_tar = (Layout(p) for p in run(go))
    assert a_tar.root["digest"] != b_tar.root["digest"]
    a_layer, b_layer = a_tar.layer(a_tar.root), b_tar.layer(b_tar.root)
    assert a_layer["srv/app.txt"].mtime == t1
    assert b_layer["srv/app.txt"].mtime == t2
    assert a_layer["one.txt"].mtime == t2 + 7  # host().file keeps it too
    assert (a_layer["srv/app.txt"].uid, a_layer["srv/app.txt"].gid) == (0, 0)


@pytest.mark.real_engine
def test_engine_made_files_and_config_created_are_engine_times(
    dagger_engine: Engine, tmp_path: Path
) -> None:
    """Files the engine writes (withNewFile) get the time they were made, and the
    config's ``created``/history ``created`` are the layer snapshot's creation time
    (engine/snapshots/manager.go ~675 ``time.Now()``, remote.go ~64-78, used by
    imageexport/writer.go normalizeLayersAndHistory/patchImageConfig), never the
    epoch. Dagger's config has no history of its own (engineutil/containerimage.go
    ~50-61), so normalizeLayersAndHistory gives EVERY layer, the base image's too,
    an entry of its own, and patchImageConfig takes ``created`` from the last one.
    The same chain asked twice is the engine's cached result: same bytes."""
    before = int(time.time())
    one, two = tmp_path / "one.tar", tmp_path / "two.tar"
    stamp = str(time.time_ns())  # a new chain, so nothing is cached from other tests

    async def go():
        ctr = marked("linux/amd64", stamp)
        await ctr.export(str(one))
        await ctr.export(str(two))

    run(go)
    after = int(time.time()) + 1
    layout = Layout(one)
    config = layout.config(layout.root)
    created = datetime.fromisoformat(config["created"].replace("Z", "+00:00")).timestamp()
    assert before - 1 <= created <= after
    history = config["history"]
    assert len(history) == len(layout.blob(layout.root["digest"])["layers"])
    assert history[-1]["created"] == config["created"]
    assert {h["comment"] for h in history} == {"buildkit.exporter.image.v0"}
    assert before <= layout.layer(layout.root)["platform.txt"].mtime <= after
    assert one.read_bytes() == two.read_bytes()


@pytest.mark.real_engine
def test_with_timestamps_sets_file_and_directory_times(
    dagger_engine: Engine, tmp_path: Path
) -> None:
    """core/file.go ~1152-1195 (File.withTimestamps: ``os.Chtimes`` on the file) and
    core/directory.go ~2601-2645 (Directory.withTimestamps: every path of the tree):
    the layer then carries that time, whatever the host's mtimes were."""
    src = host_app(tmp_path / "src", 1_600_000_000)
    (src / "sub").mkdir()
    (src / "sub" / "b.txt").write_text("b\n")
    dest = tmp_path / "stamped.tar"

    async def go():
        ctr = (
            marked("linux/amd64", "ts")
            .with_directory("/srv", dag.host().directory(str(src)).with_timestamps(1234567890))
            .with_file("/bin-app", dag.host().file(str(src / "app.txt")).with_timestamps(987654321))
        )
        await ctr.export(str(dest))

    run(go)
    layout = Layout(dest)
    layer = layout.layer(layout.root)
    assert {layer[n].mtime for n in ("srv/app.txt", "srv/sub", "srv/sub/b.txt")} == {1234567890}
    assert layer["bin-app"].mtime == 987654321


# --- 5. base image config ----------------------------------------------------------


@pytest.mark.real_engine
def test_export_carries_base_config_and_with_entrypoint_clears_cmd(
    dagger_engine: Engine, tmp_path: Path
) -> None:
    """The exported config is the container's config, which ``from`` took from the
    base image (core/container_image.go ContainerFromImageRefLazy: ``container.Config
    = lazy.Config``); core/schema/container.go ~1639-1644 ``withEntrypoint`` sets
    Entrypoint and clears Cmd unless ``keepDefaultArgs``."""

    async def go():
        base = dag.container(platform=dagger.Platform("linux/amd64")).from_(ALPINE)
        out = {}
        for name, ctr in {
            "base": base,
            "entrypoint": base.with_entrypoint(["/bin/app"]),
            "kept": base.with_entrypoint(["/bin/app"], keep_default_args=True),
        }.items():
            dest = tmp_path / f"{name}.tar"
            await ctr.with_new_file("/x", name).export(str(dest))
            layout = Layout(dest)
            out[name] = layout.config(layout.root)["config"]
        return out

    configs = run(go)
    assert configs["base"]["Cmd"] == ["/bin/sh"]
    assert any(e.startswith("PATH=") for e in configs["base"]["Env"])
    assert "Entrypoint" not in configs["base"]
    assert configs["entrypoint"]["Entrypoint"] == ["/bin/app"]
    assert "Cmd" not in configs["entrypoint"]
    assert configs["kept"]["Entrypoint"] == ["/bin/app"]
    assert configs["kept"]["Cmd"] == ["/bin/sh"]
    assert configs["kept"]["Env"] == configs["base"]["Env"]


# --- import: the archive's own rules, directly ----------------------------------------


def rewrite(src: Path, dest: Path, changes: dict[str, bytes]) -> Path:
    """Copy a layout tarball, replacing (or adding) the given members."""
    with tarfile.open(src) as tin, tarfile.open(dest, "w") as tout:
        for member in tin.getmembers():
            if member.name in changes:
                continue
            tout.addfile(member, tin.extractfile(member) if member.isfile() else None)
        for name, data in changes.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tout.addfile(info, io.BytesIO(data))
    return dest


def test_import_archive_rules(tmp_path: Path) -> None:
    """containerd core/images/archive/importer.go ImportIndex (~115-125: the OCI
    version, index.json), core/container.go resolveIndex (~6897-6899: a nested index
    must be an OCI index; ~6943-6945: a descriptor must be a manifest or an index),
    core/container_image.go loadImportedImageFromStore (~347-353: layers vs diffIDs),
    with the wrapping of core/container_image.go Import (~190-203)."""
    from tests.dagger_test_engine.fs import BlobStore, Entry, freeze
    from tests.dagger_test_engine.oci import (
        ImageImportError,
        ImageSpec,
        import_image,
        write_oci_tarball,
    )

    store = BlobStore(tmp_path / "blobs")
    tree = freeze({"a": Entry("dir", 0o755, mtime=1)})
    single = tmp_path / "single.tar"
    multi = tmp_path / "multi.tar"
    write_oci_tarball(store, [ImageSpec("linux/amd64", tree)], single)
    write_oci_tarball(store, [ImageSpec(p, tree) for p in ("linux/amd64", "linux/arm64")], multi)
    layout = Layout(multi)

    def fails(path: Path, message: str) -> None:
        with pytest.raises(ImageImportError) as info:
            import_image(store, path, "linux/amd64")
        assert str(info.value) == message

    fails(
        rewrite(single, tmp_path / "v2.tar", {"oci-layout": b'{"imageLayoutVersion":"2.0.0"}'}),
        "image archive import: unsupported OCI version 2.0.0",
    )
    no_media = {k: v for k, v in layout.root.items() if k != "mediaType"}
    fails(
        rewrite(
            multi,
            tmp_path / "nomedia.tar",
            {"index.json": json.dumps({"manifests": [no_media]}).encode()},
        ),
        "resolve imported image manifest: expected manifest or index, got ",
    )
    docker_list = {
        **layout.root,
        "mediaType": "application/vnd.docker.distribution.manifest.list.v2+json",
    }
    fails(
        rewrite(
            multi,
            tmp_path / "list.tar",
            {"index.json": json.dumps({"manifests": [docker_list]}).encode()},
        ),
        "resolve imported image manifest: expected index, got "
        "application/vnd.docker.distribution.manifest.list.v2+json",
    )
    single_layout = Layout(single)
    manifest = single_layout.blob(single_layout.root["digest"])
    config = single_layout.blob(manifest["config"]["digest"])
    config["rootfs"]["diff_ids"].append(config["rootfs"]["diff_ids"][0])
    config_bytes = json.dumps(config).encode()
    config_digest = "sha256:" + hashlib.sha256(config_bytes).hexdigest()
    manifest["config"] = {**manifest["config"], "digest": config_digest, "size": len(config_bytes)}
    manifest_bytes = json.dumps(manifest).encode()
    manifest_digest = "sha256:" + hashlib.sha256(manifest_bytes).hexdigest()
    root = {**single_layout.root, "digest": manifest_digest, "size": len(manifest_bytes)}
    fails(
        rewrite(
            single,
            tmp_path / "diffids.tar",
            {
                "blobs/sha256/" + config_digest[7:]: config_bytes,
                "blobs/sha256/" + manifest_digest[7:]: manifest_bytes,
                "index.json": json.dumps({"manifests": [root]}).encode(),
            },
        ),
        "mismatched image rootfs and manifest layers: 2 diffIDs vs 1 layers",
    )


@pytest.mark.real_engine
def test_from_a_private_registry_uses_the_sessions_credentials(
    dagger_engine: Engine, auth_registry: Registry, tmp_path: Path
) -> None:
    """core/schema/container.go ``from``: the address is resolved when the field
    resolves (``ResolveImageConfig``, engine/server/resolver), through
    containerd's resolver with the session's credentials; ``withRegistryAuth``
    (same file) adds one to the session when it resolves, so it goes first in the
    chain. A refusal names the image and platform, then containerd's words for its
    first request, a HEAD (remotes/docker/resolver.go)."""
    ref = push_base(auth_registry, "base:1", {"Env": ["PATH=/bin", "FROM_MIRROR=yes"]}, tmp_path)
    platform = "linux/amd64"

    async def anonymous():
        return await dag.container(platform=dagger.Platform(platform)).from_(ref).sync()

    with pytest.raises(dagger.QueryError) as err:
        run(anonymous)
    message = str(err.value)
    assert f'failed to resolve image "{ref}" (platform: "{platform}")' in message
    url = f"http://{auth_registry.host}/v2/mirror/base/manifests/1"
    assert f"unexpected status from HEAD request to {url}: 401 Unauthorized" in message

    async def authenticated():
        secret = dag.set_secret("mirror-password", auth_registry.password)
        ctr = (
            dag.container(platform=dagger.Platform(platform))
            .with_registry_auth(auth_registry.host, auth_registry.username, secret)
            .from_(ref)
        )
        return await ctr.env_variable("FROM_MIRROR")

    assert run(authenticated) == "yes"
