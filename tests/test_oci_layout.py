"""Tests for the test engine's OCI image layouts.

The round trip through our own reader proves little on its own (a writer and reader
can share a misunderstanding), so the tarballs are also checked by independent
readers: skopeo (containers/image) and umoci (opencontainers/umoci). The layout's
shape follows the real engine (see the docstring of tests/dagger_test_engine/oci.py
and tests/test_engine_contract_images.py for the engine-facing contract).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import re
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from tests.dagger_test_engine import fs
from tests.dagger_test_engine.fs import BlobStore, Entry
from tests.dagger_test_engine.oci import (
    HISTORY_COMMENT,
    ImageSpec,
    build_image,
    go_json,
    image_blobs,
    parse_platform,
    read_oci_tarball,
    rfc3339_seconds,
    write_oci_tarball,
)

SCRIPT = b"#!/bin/sh\necho hi\n"
MTIME = 1_700_000_000  # file times of the test tree: fixed, so layers are comparable
CREATED = "2025-01-02T03:04:05.678Z"  # the snapshot time the engine would pass
ANNOTATIONS = {"org.opencontainers.image.version": "v0.1.2"}
CONFIG = {
    "Entrypoint": ["/app/server"],
    "Cmd": ["--port", "8080"],
    "Env": ["PATH=/usr/local/bin:/usr/bin:/bin", "APP_ENV=test"],
    "User": "65532",
    "WorkingDir": "/app",
    "Labels": {"org.opencontainers.image.source": "https://example.com/svc", "team": "go"},
    "ExposedPorts": {"8080/tcp": {}},
}


@pytest.fixture
def store(tmp_path: Path) -> BlobStore:
    return BlobStore(tmp_path / "blobs")


def make_tree(store: BlobStore, server: bytes = b"\x7fELF fake server binary\n") -> fs.Tree:
    entries: dict[str, Entry] = {
        "app": Entry("dir", 0o755, mtime=MTIME),
        "app/server": fs.file_entry(store, server, 0o755, mtime=MTIME),
        "app/run.sh": fs.file_entry(store, SCRIPT, 0o755, mtime=MTIME + 1),
        "app-data": Entry("dir", 0o755, mtime=MTIME),
        "etc": Entry("dir", 0o755),
        "etc/svc": Entry("dir", 0o750),
        "etc/svc/conf.d": Entry("dir", 0o755),
        "etc/svc/conf.d/app.yaml": fs.file_entry(store, b"port: 8080\n", 0o640, mtime=MTIME),
        "usr": Entry("dir", 0o755),
        "usr/local": Entry("dir", 0o755),
        "usr/local/bin": Entry("dir", 0o755),
        "usr/local/bin/server": Entry("symlink", 0o777, target="/app/server"),
    }
    return fs.freeze(entries)


def spec(store: BlobStore, platform: str = "linux/amd64", **kw) -> ImageSpec:
    return ImageSpec(
        platform=platform,
        tree=kw.pop("tree", None) or make_tree(store),
        config=kw.pop("config", CONFIG),
        annotations=kw.pop("annotations", ANNOTATIONS),
        created=kw.pop("created", CREATED),
    )


def tar_members(path: Path) -> dict[str, bytes | None]:
    with tarfile.open(path) as tar:
        return {
            m.name: (tar.extractfile(m).read() if m.isfile() else None)  # type: ignore[union-attr]
            for m in tar.getmembers()
        }


def content(store: BlobStore, entry: Entry) -> bytes:
    return store.read(entry.blob)


# --- structure and determinism ------------------------------------------------------


def test_layout_structure_single_image(store: BlobStore, tmp_path: Path) -> None:
    """One platform: index.json's only descriptor is the manifest itself, with no
    platform and no ref name (engine/engineutil/imageexport/writer.go ~117-146;
    containerd's archive exporter copies it unchanged); a Docker manifest.json is
    included; the container's annotations are on the manifest and its descriptor."""
    dest = tmp_path / "img.tar"
    digest = write_oci_tarball(store, [spec(store)], dest)
    assert dest.stat().st_mode & 0o777 == 0o600
    members = tar_members(dest)
    assert json.loads(members["oci-layout"]) == {"imageLayoutVersion": "1.0.0"}
    index = json.loads(members["index.json"])
    assert index["mediaType"] == "application/vnd.oci.image.index.v1+json"
    [top] = index["manifests"]
    assert top["digest"] == digest
    assert top["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    assert "platform" not in top
    assert top["annotations"] == ANNOTATIONS
    manifest_bytes = members["blobs/sha256/" + digest.removeprefix("sha256:")]
    assert manifest_bytes is not None
    assert "sha256:" + hashlib.sha256(manifest_bytes).hexdigest() == digest
    assert manifest_bytes == go_json(json.loads(manifest_bytes), indent=True)  # MarshalIndent
    assert top["size"] == len(manifest_bytes)
    manifest = json.loads(manifest_bytes)
    assert manifest["schemaVersion"] == 2
    assert manifest["annotations"] == ANNOTATIONS
    [layer_desc] = manifest["layers"]
    assert layer_desc["mediaType"] == "application/vnd.oci.image.layer.v1.tar+gzip"
    config_name = "blobs/sha256/" + manifest["config"]["digest"][7:]
    config = json.loads(members[config_name])
    assert list(config) == sorted(config)  # a re-marshalled Go map
    assert config["architecture"] == "amd64" and config["os"] == "linux"
    assert "variant" not in config
    assert config["created"] == CREATED
    assert config["history"] == [
        {"created": CREATED, "created_by": "created by buildkit", "comment": HISTORY_COMMENT}
    ]
    assert config["config"] == CONFIG
    docker = json.loads(members["manifest.json"])
    assert docker == [
        {
            "Config": config_name,
            "RepoTags": None,
            "Layers": ["blobs/sha256/" + layer_desc["digest"][7:]],
        }
    ]
    layer = members["blobs/sha256/" + layer_desc["digest"][7:]]
    assert layer is not None and layer[:2] == b"\x1f\x8b"
    with tarfile.open(fileobj=io.BytesIO(layer)) as layer_tar:
        raw = layer_tar.getmembers()
    names = [m.name for m in raw]
    # Directory-walk order: a directory's contents come before its next sibling.
    assert names.index("app/server") < names.index("app-data")
    assert names == sorted(names, key=lambda n: n.split("/"))
    assert not any(n.startswith("/") for n in names)
    assert {(m.uid, m.gid, m.uname, m.gname) for m in raw} == {(0, 0, "", "")}
    times = {m.name: m.mtime for m in raw}
    assert times["app/server"] == MTIME and times["app/run.sh"] == MTIME + 1
    # Entries nobody gave a time (parents, "etc") carry the snapshot's time.
    assert times["etc"] == times["usr"] == rfc3339_seconds(CREATED)
    diff_id = "sha256:" + hashlib.sha256(gzip.decompress(layer)).hexdigest()
    assert config["rootfs"] == {"type": "layers", "diff_ids": [diff_id]}
    with tarfile.open(dest) as tar:
        modes = {m.name.rstrip("/"): m.mode for m in tar.getmembers()}
    assert modes["oci-layout"] == 0o444 and modes["index.json"] == 0o644
    assert modes["blobs"] == 0o755 and modes[config_name] == 0o444


def test_deterministic_bytes_and_digest(store: BlobStore, tmp_path: Path) -> None:
    a, b = tmp_path / "a.tar", tmp_path / "b.tar"
    d1 = write_oci_tarball(store, [spec(store)], a)
    # A fresh ImageSpec from a fresh tree: equal content, not the same objects.
    d2 = write_oci_tarball(store, [spec(store)], b)
    assert d1 == d2
    assert a.read_bytes() == b.read_bytes()

    changed = spec(store, tree=make_tree(store, server=b"\x7fELF other binary\n"))
    d3 = write_oci_tarball(store, [changed], tmp_path / "c.tar")
    assert d3 != d1

    mode_only = dict(make_tree(store))
    mode_only["app/run.sh"] = fs.file_entry(store, SCRIPT, 0o644, mtime=MTIME + 1)
    d4 = write_oci_tarball(store, [spec(store, tree=fs.freeze(mode_only))], tmp_path / "d.tar")
    assert d4 != d1

    no_annotations = write_oci_tarball(store, [spec(store, annotations={})], tmp_path / "e.tar")
    assert no_annotations != d1

    # Times are content too: a file's mtime, or the snapshot's time.
    touched = dict(make_tree(store))
    touched["app/run.sh"] = fs.file_entry(store, SCRIPT, 0o755, mtime=MTIME + 2)
    d5 = write_oci_tarball(store, [spec(store, tree=fs.freeze(touched))], tmp_path / "f.tar")
    later = write_oci_tarball(
        store, [spec(store, created="2025-01-02T03:04:06Z")], tmp_path / "g.tar"
    )
    assert len({d1, d5, later}) == 3


def test_multi_platform_index(store: BlobStore, tmp_path: Path) -> None:
    """Several platforms: one index descriptor in index.json; the index lists the
    manifests sorted by platform string, each with ``platform``
    (engine/engineutil/containerimage.go ~67-69, imageexport/writer.go ~160-210)."""
    images = [spec(store, "linux/arm64"), spec(store, "linux/amd64"), spec(store, "linux/arm/v7")]
    dest = tmp_path / "multi.tar"
    digest = write_oci_tarball(store, images, dest)
    assert write_oci_tarball(store, images[::-1], tmp_path / "again.tar") == digest
    members = tar_members(dest)
    assert "manifest.json" not in members
    [top] = json.loads(members["index.json"])["manifests"]
    assert top["digest"] == digest
    assert top["mediaType"] == "application/vnd.oci.image.index.v1+json"
    assert "annotations" not in top and "platform" not in top
    index = json.loads(members["blobs/sha256/" + digest[7:]])
    assert index["mediaType"] == "application/vnd.oci.image.index.v1+json"
    assert "annotations" not in index
    assert [m["platform"] for m in index["manifests"]] == [
        {"architecture": "amd64", "os": "linux"},
        {"architecture": "arm", "os": "linux", "variant": "v7"},
        {"architecture": "arm64", "os": "linux"},
    ]
    assert all(m["annotations"] == ANNOTATIONS for m in index["manifests"])
    # Same files, different platform: the configs (and so the manifests) differ.
    assert len({m["digest"] for m in index["manifests"]}) == 3

    desc, blobs = image_blobs(store, images)
    assert desc["digest"] == digest
    for name, data in members.items():
        if name.startswith("blobs/sha256/") and data is not None:
            assert blobs["sha256:" + name.rsplit("/", 1)[1]] == data
    assert len(blobs) == sum(1 for n in members if n.startswith("blobs/sha256/"))

    with pytest.raises(ValueError, match='duplicate platform "linux/amd64"'):
        image_blobs(store, [spec(store), spec(store)])


def test_build_image_blobs(store: BlobStore) -> None:
    desc, blobs = build_image(store, spec(store, "linux/arm/v7"))
    assert "platform" not in desc  # the index writer adds it
    assert len(blobs) == 3
    for digest, data in blobs.items():
        assert digest == "sha256:" + hashlib.sha256(data).hexdigest()
    config_digest = json.loads(blobs[desc["digest"]])["config"]["digest"]
    assert json.loads(blobs[config_digest])["variant"] == "v7"


# --- round trip ----------------------------------------------------------------------


def test_round_trip(store: BlobStore, tmp_path: Path) -> None:
    images = [spec(store, "linux/amd64"), spec(store, "linux/arm64", annotations={})]
    dest = tmp_path / "rt.tar"
    write_oci_tarball(store, images, dest)
    other = BlobStore(tmp_path / "other-store")  # contents must come from the tarball
    back = read_oci_tarball(other, dest)
    assert [i.platform for i in back] == ["linux/amd64", "linux/arm64"]
    assert [dict(i.annotations) for i in back] == [ANNOTATIONS, {}]
    assert {i.created for i in back} == {CREATED}
    original = make_tree(store)
    for image in back:
        assert image.config == CONFIG
        assert set(image.tree) == set(original)
        for key, entry in original.items():
            got = image.tree[key]
            assert (got.kind, got.mode, got.target) == (entry.kind, entry.mode, entry.target), key
            if entry.mtime is not None:
                assert got.mtime == entry.mtime, key
            if entry.kind == "file":
                assert content(other, got) == content(store, entry)
        assert content(other, image.tree["app/run.sh"]) == SCRIPT
        assert image.tree["app/run.sh"].mode == 0o755
    # Reading back and writing again reproduces the same image.
    again = write_oci_tarball(other, back, tmp_path / "rt2.tar")
    assert again == write_oci_tarball(store, images, tmp_path / "rt3.tar")


def test_read_multi_layer_with_whiteouts(store: BlobStore, tmp_path: Path) -> None:
    """A layout from another tool: plain-tar and gzip layers, whiteouts, opaque dirs."""

    def layer(files: dict[str, bytes | None]) -> bytes:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            for name, data in files.items():
                info = tarfile.TarInfo(name)
                if data is None:
                    info.type = tarfile.DIRTYPE
                    info.mode = 0o755
                    tar.addfile(info)
                else:
                    info.size = len(data)
                    info.mode = 0o644
                    tar.addfile(info, io.BytesIO(data))
        return buf.getvalue()

    l1 = layer({"./etc/": None, "./etc/a": b"a", "./etc/b": b"b", "./var/": None, "var/x": b"x"})
    l2 = gzip.compress(
        layer({"etc/.wh.a": b"", "var/.wh..wh..opq": b"", "var/y": b"y", "etc/c": b"c"})
    )
    config = json.dumps(
        {"architecture": "arm64", "os": "linux", "config": {"User": "1000"}}
    ).encode()

    def d(media: str, data: bytes) -> dict:
        return {
            "mediaType": media,
            "digest": "sha256:" + hashlib.sha256(data).hexdigest(),
            "size": len(data),
        }

    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "config": d("application/vnd.oci.image.config.v1+json", config),
            "layers": [
                d("application/vnd.oci.image.layer.v1.tar", l1),
                d("application/vnd.oci.image.layer.v1.tar+gzip", l2),
            ],
        }
    ).encode()
    index = json.dumps(
        {
            "schemaVersion": 2,
            "manifests": [d("application/vnd.oci.image.manifest.v1+json", manifest)],
        }
    ).encode()
    dest = tmp_path / "foreign.tar"
    with tarfile.open(dest, "w") as tar:
        for name, data in {
            "oci-layout": b'{"imageLayoutVersion":"1.0.0"}',
            "index.json": index,
            **{
                f"blobs/sha256/{hashlib.sha256(b).hexdigest()}": b
                for b in (l1, l2, config, manifest)
            },
        }.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))

    [image] = read_oci_tarball(store, dest)
    assert image.platform == "linux/arm64"
    assert image.config == {"User": "1000"}
    assert dict(image.annotations) == {}
    assert sorted(image.tree) == ["etc", "etc/b", "etc/c", "var", "var/y"]
    assert content(store, image.tree["var/y"]) == b"y"


# --- platforms -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad", ["linux", "linux/amd46", "linux/x86_64", "linx/amd64", "linux//v7", "linux/arm/v7/x", ""]
)
def test_bad_platform_rejected(store: BlobStore, bad: str) -> None:
    with pytest.raises(ValueError, match=re.escape(repr(bad))):
        ImageSpec(platform=bad, tree=fs.EMPTY, config={})


def test_bad_platform_rejected_by_build(store: BlobStore) -> None:
    # Even if validation in ImageSpec were bypassed, the builder checks too.
    good = spec(store)
    object.__setattr__(good, "platform", "linux/amd64/zz!")
    with pytest.raises(ValueError, match="linux/amd64/zz!"):
        build_image(store, good)


def test_parse_platform() -> None:
    assert parse_platform("linux/arm/v7") == {"architecture": "arm", "os": "linux", "variant": "v7"}
    with pytest.raises(ValueError, match="did you mean 'arm64'"):
        parse_platform("linux/aarch64")


# --- independent readers -------------------------------------------------------------


def tool(name: str) -> str:
    path = shutil.which(name) or (f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").exists() else None)
    if path is None:
        pytest.skip(f"{name} is not installed (apt-get install {name})")
    return path


def run(*args: str | Path) -> str:
    proc = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"{args} failed ({proc.returncode}):\n{proc.stderr}"
    return proc.stdout


def test_skopeo_inspect_single(store: BlobStore, tmp_path: Path) -> None:
    skopeo = tool("skopeo")
    dest = tmp_path / "single.tar"
    digest = write_oci_tarball(store, [spec(store)], dest)
    info = json.loads(run(skopeo, "inspect", f"oci-archive:{dest}"))
    assert info["Digest"] == digest
    assert info["Architecture"] == "amd64" and info["Os"] == "linux"
    assert info["Labels"] == CONFIG["Labels"]
    assert info["Env"] == CONFIG["Env"]
    assert len(info["Layers"]) == 1
    config = json.loads(run(skopeo, "inspect", "--config", f"oci-archive:{dest}"))
    assert config["config"]["Entrypoint"] == ["/app/server"]
    assert config["config"]["User"] == "65532"
    assert config["config"]["Labels"] == CONFIG["Labels"]
    assert config["config"]["ExposedPorts"] == {"8080/tcp": {}}
    # Like the engine's, the layout names no ref: skopeo takes the only image there is.
    [top] = json.loads(tar_members(dest)["index.json"] or b"")["manifests"]
    assert "org.opencontainers.image.ref.name" not in top.get("annotations", {})


def test_skopeo_inspect_multi(store: BlobStore, tmp_path: Path) -> None:
    skopeo = tool("skopeo")
    amd = spec(store, "linux/amd64")
    arm = spec(store, "linux/arm64", config={**CONFIG, "User": "1000"})
    dest = tmp_path / "multi.tar"
    digest = write_oci_tarball(store, [amd, arm], dest)
    raw = json.loads(run(skopeo, "inspect", "--raw", f"oci-archive:{dest}"))
    assert raw["mediaType"] == "application/vnd.oci.image.index.v1+json"
    assert sorted(m["platform"]["architecture"] for m in raw["manifests"]) == ["amd64", "arm64"]
    arm_manifest = next(m for m in raw["manifests"] if m["platform"]["architecture"] == "arm64")

    override = ("--override-arch", "arm64", "--override-os", "linux")
    info = json.loads(run(skopeo, *override, "inspect", f"oci-archive:{dest}"))
    assert info["Architecture"] == "arm64"
    # Like a registry inspect, "Digest" is the digest of what the name points at (the
    # index), not of the per-platform manifest; the platform shows in the config.
    assert info["Digest"] == digest
    raw_arm = json.loads(run(skopeo, *override, "inspect", "--raw", f"oci-archive:{dest}"))
    assert raw_arm == raw  # --raw never resolves the index
    config = json.loads(run(skopeo, *override, "inspect", "--config", f"oci-archive:{dest}"))
    assert config["config"]["User"] == "1000"
    assert config["config"]["Entrypoint"] == ["/app/server"]

    amd_info = json.loads(run(skopeo, "--override-arch", "amd64", "inspect", f"oci-archive:{dest}"))
    assert amd_info["Architecture"] == "amd64"
    amd_config = json.loads(
        run(skopeo, "--override-arch", "amd64", "inspect", "--config", f"oci-archive:{dest}")
    )
    assert amd_config["config"]["User"] == "65532"
    assert amd_config["architecture"] == "amd64"
    assert config["architecture"] == "arm64"
    assert arm_manifest["size"] > 0


def test_skopeo_copy_to_dir(store: BlobStore, tmp_path: Path) -> None:
    skopeo = tool("skopeo")
    dest = tmp_path / "copy.tar"
    write_oci_tarball(store, [spec(store, "linux/amd64"), spec(store, "linux/arm64")], dest)
    out = tmp_path / "copied"
    run(
        skopeo,
        "--insecure-policy",
        "--override-arch",
        "amd64",
        "copy",
        f"oci-archive:{dest}",
        f"dir:{out}",
    )
    manifest = json.loads((out / "manifest.json").read_text())
    layer_digest = manifest["layers"][0]["digest"]
    assert (out / layer_digest.removeprefix("sha256:")).is_file()
    # skopeo copies (verifies) blobs verbatim: the layer still matches its digest.
    data = (out / layer_digest.removeprefix("sha256:")).read_bytes()
    assert "sha256:" + hashlib.sha256(data).hexdigest() == layer_digest


def test_umoci_unpack(store: BlobStore, tmp_path: Path) -> None:
    umoci = tool("umoci")
    dest = tmp_path / "umoci.tar"
    write_oci_tarball(store, [spec(store)], dest)
    # umoci addresses images by ref name, which the engine's export has none of;
    # skopeo (another independent reader) copies it into a tagged layout verbatim.
    layout = tmp_path / "layout"
    run(tool("skopeo"), "--insecure-policy", "copy", f"oci-archive:{dest}", f"oci:{layout}:latest")
    stat = json.loads(run(umoci, "stat", "--json", "--image", f"{layout}:latest"))
    assert len(stat["history"]) == 1
    bundle = tmp_path / "bundle"
    run(umoci, "unpack", "--rootless", "--image", f"{layout}:latest", bundle)
    rootfs = bundle / "rootfs"
    script = rootfs / "app" / "run.sh"
    assert script.read_bytes() == SCRIPT
    assert script.stat().st_mode & 0o7777 == 0o755
    assert (rootfs / "etc/svc/conf.d/app.yaml").stat().st_mode & 0o7777 == 0o640
    assert (rootfs / "usr/local/bin/server").is_symlink()
    assert (rootfs / "usr/local/bin/server").readlink() == Path("/app/server")
    runtime = json.loads((bundle / "config.json").read_text())
    assert runtime["process"]["args"] == ["/app/server", "--port", "8080"]
    assert runtime["process"]["cwd"] == "/app"
    assert "APP_ENV=test" in runtime["process"]["env"]
