"""Stage 3, assemble runtime: the small image around each platform's binary.

Per platform: the pinned runtime base at that platform, the runtime files, the
binary at a fixed path, the entrypoint, the image config (``tasks/runtimespec.py``:
default arguments, environment, ports, working directory, a non-root numeric user
by default), and the OCI labels. All platforms
go into one OCI image-layout tarball, which is this stage's artifact and the
input of the publish stage, so publishing never needs to rebuild.

The ``created`` label and the binary's file time come from the source (commit
time, or newest file), not the clock, so the same binary gives the same layer.
The image config's own ``created`` is the engine's, and the engine keeps no
promise of byte-identical exports, so two engine builds of one source may give
different image digests. What makes an unchanged build a no-op is Prefect's
cache: the stages are served from their results, and the tarball and digest of
the first build are reported again.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prefect import task
from prefect.context import TaskRunContext
from pydantic import BaseModel

from tasks import image_store, progress
from tasks.binaries import available, host_file, result_storage
from tasks.compile import CompiledBinary
from tasks.image_store import file_sha256
from tasks.oci_layout import read_image
from tasks.params import BuildParams, ParamsError
from tasks.registry_auth import RegistryAuth, pull_auth, registry_host, with_registry_auth
from tasks.retries import retry_options
from tasks.runtimespec import parse_port
from tasks.session import engine_ready, in_engine
from tasks.source import SourceInfo, git_token, source_directory

if TYPE_CHECKING:
    import dagger

BIN_DIR = "/usr/local/bin"
_CODE = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()


class ImageArtifact(BaseModel):
    path: str
    tarball_sha256: str
    digest: str  # of the manifest (one platform) or the image index (several)
    platforms: dict[str, str]  # platform -> manifest digest
    size: int
    # How the container starts, read back from the tarball (oci_layout.read_image).
    config: dict[str, Any] = {}


def oci_labels(params: BuildParams, source: SourceInfo, version: str) -> dict[str, str]:
    labels = {
        "org.opencontainers.image.title": params.resolved_app_name(),
        "org.opencontainers.image.version": version,
        "org.opencontainers.image.created": source.created,
        "org.opencontainers.image.source": source_url(source),
        "org.opencontainers.image.base.name": params.runtime_image,
    }
    if source.commit:
        labels["org.opencontainers.image.revision"] = source.commit
    labels.update(params.labels)
    return {k: v for k, v in labels.items() if v}


# OCI's pre-defined annotation keys (image-spec annotations.md) share the labels'
# prefix; ref.name is left out, as it names a tag inside an image layout.
_OCI_PREFIX = "org.opencontainers.image."
_LAYOUT_ONLY = ("org.opencontainers.image.ref.name",)


def oci_annotations(labels: Mapping[str, str]) -> dict[str, str]:
    """The OCI labels again as manifest annotations, as ``docker buildx`` and
    docker/metadata-action write them: registries and their clients (crane,
    ``docker buildx imagetools inspect``, GHCR, Harbor, Renovate) read a manifest's
    annotations without fetching its config, and per platform in an image index.
    Other labels (``com.example.team``) stay labels only."""
    return {k: v for k, v in labels.items() if k.startswith(_OCI_PREFIX) and k not in _LAYOUT_ONLY}


def source_url(source: SourceInfo) -> str:
    return source.location if source.kind == "git" else f"file://{source.location}"


RuntimeItem = tuple[str, "dagger.Directory | dagger.File"]


def runtime(
    binary: dagger.File,
    params: BuildParams,
    platform: str,
    labels: dict[str, str],
    files: Sequence[RuntimeItem] = (),
    programs: Sequence[tuple[str, dagger.File]] = (),
    pull: RegistryAuth | None = None,
) -> dagger.Container:
    """The runtime chain for one platform (not evaluated): the base, the runtime
    files (:func:`runtime_files`), the ``extra_packages``' ``programs`` (by file
    name), the binary, then the image config: entrypoint, default arguments,
    environment, ports, working directory, user, labels; and the manifest's
    annotations (:func:`oci_annotations`).

    The files go in before the programs, so none can replace one. The default
    arguments follow the entrypoint because setting an entrypoint clears them
    (core/schema/container.go, withEntrypoint without keepDefaultArgs), which also
    drops the base image's own CMD (alpine's /bin/sh). ``pull`` holds the registry
    credentials, given to the engine before the base is pulled when one is for its
    registry (``tasks/registry_auth.py``)."""
    import dagger
    from dagger import dag

    path = f"{BIN_DIR}/{params.resolved_app_name()}"
    ctr = dag.container(platform=dagger.Platform(platform))
    if params.runtime_image != "scratch":
        host = registry_host(params.runtime_image)
        ctr = with_registry_auth(ctr, host, pull).from_(params.runtime_image)
    for target, item in files:
        if isinstance(item, dagger.Directory):
            ctr = ctr.with_directory(target, item)
        else:
            ctr = ctr.with_file(target, item)
    for name, program in programs:
        ctr = ctr.with_file(f"{BIN_DIR}/{name}", program, permissions=0o755)
    ctr = ctr.with_file(path, binary, permissions=0o755).with_entrypoint([path])
    if params.runtime_args:
        ctr = ctr.with_default_args(params.runtime_args)
    for name, value in params.runtime_env.items():
        ctr = ctr.with_env_variable(name, value)
    for spec in params.exposed_ports:
        port, protocol = parse_port(spec)
        ctr = ctr.with_exposed_port(port, protocol=dagger.NetworkProtocol(protocol.upper()))
    workdir = params.runtime_placements()[0]
    if workdir:
        ctr = ctr.with_workdir(workdir)
    ctr = ctr.with_user(params.runtime_user)
    for key, value in sorted(labels.items()):
        ctr = ctr.with_label(key, value)
    for key, value in sorted(oci_annotations(labels).items()):
        ctr = ctr.with_annotation(key, value)
    return ctr


def runtime_files(
    params: BuildParams, source: SourceInfo, tree: dagger.Directory
) -> list[RuntimeItem]:
    """Each of ``runtime_files`` taken from the source ``tree`` (not evaluated),
    with the path it lands at. Stamped with the source's time, as the binary is,
    so the same files give the same layer."""
    items: list[RuntimeItem] = []
    for _, rel, target in params.runtime_placements()[1]:
        item: dagger.Directory | dagger.File
        if rel in source.runtime_dirs:
            item = (tree if rel == "." else tree.directory(rel)).with_timestamps(source.epoch())
        else:
            item = tree.file(rel).with_timestamps(source.epoch())
        items.append((target, item))
    return items


def assemble_cache_key(context: TaskRunContext, parameters: dict[str, Any]) -> str:
    params: BuildParams = parameters["params"]
    binaries: list[CompiledBinary] = parameters["binaries"]
    determinants = {
        "stage": "assemble",
        "code": _CODE,
        "binaries": [
            (b.platform, b.sha256, [(e.name, e.sha256) for e in b.extras]) for b in binaries
        ],
        "runtime_image": params.runtime_image,
        "labels": oci_labels(params, parameters["source"], parameters["version"]),
        "app": params.resolved_app_name(),
        "output": str(params.resolved_output()),
        "config": [
            params.runtime_args,
            params.runtime_env,
            params.exposed_ports,
            params.runtime_workdir,
            params.runtime_user,
        ],
        # The files' contents: the source's digest covers them (and more, so
        # another change to the source assembles again; the compile is still cached).
        "files": [params.module_dir, params.runtime_files, parameters["source"].digest]
        if params.runtime_files
        else [],
    }
    return hashlib.sha256(json.dumps(determinants, sort_keys=True).encode()).hexdigest()


def still_valid(image: ImageArtifact) -> bool:
    """A cached artifact is only as good as the file it names (the stored tarball,
    named by its content, so it can only have been removed, not replaced)."""
    path = Path(image.path)
    return path.is_file() and file_sha256(path) == image.tarball_sha256


@task(
    name="assemble runtime", cache_key_fn=assemble_cache_key, persist_result=True, **retry_options()
)
async def assemble_image(
    source: SourceInfo, params: BuildParams, binaries: list[CompiledBinary], version: str
) -> ImageArtifact:
    await engine_ready()
    labels = oci_labels(params, source, version)
    output = params.resolved_output()
    output.parent.mkdir(parents=True, exist_ok=True)
    storage = await result_storage()
    pull = await pull_auth(params, params.runtime_image)
    files: list[RuntimeItem] = []
    if params.runtime_files:
        files = runtime_files(params, source, source_directory(source, await git_token(params)))
    async with contextlib.AsyncExitStack() as stored_files:
        variants = []

        async def engine_file(sha256: str, key: str) -> dagger.File:
            # Compiled in this session: still in the engine. Served from Prefect's
            # cache: the stored file (tasks/binaries.py), uploaded. Either way with
            # the source's time, not the file's: the same binary then gives the
            # same layer, so registries share it between builds.
            file = in_engine(sha256)
            if file is None:
                from dagger import dag

                path = await stored_files.enter_async_context(host_file(key, storage))
                file = dag.host().file(str(path))
            return file.with_timestamps(source.epoch())

        for b in binaries:
            binary = await engine_file(b.sha256, b.key)
            programs = [(e.name, await engine_file(e.sha256, e.key)) for e in b.extras]
            variants.append(runtime(binary, params, b.platform, labels, files, programs, pull))
        # Export into the image store under a unique name, then keep it under its
        # content hash: a failed export leaves nothing, and concurrent builds of
        # one app never overwrite each other's tarball (tasks/image_store.py).
        partial = image_store.new_partial(output)
        try:
            await variants[0].export(str(partial), platform_variants=variants[1:])
            stored, sha = image_store.keep(partial, output)
        finally:
            partial.unlink(missing_ok=True)
    digest, platforms, config = read_image(stored)
    image = ImageArtifact(
        path=str(stored),
        tarball_sha256=sha,
        digest=digest,
        platforms=platforms,
        size=stored.stat().st_size,
        config=config,
    )
    image_store.prune(output, stored)
    return image


def prepare_output(params: BuildParams) -> Path:
    """The run's output path, proven writable before any engine work: the export
    comes after the compile, and a path it cannot write would fail the build only
    then. Refused as the ``output`` parameter, which is how a user fixes it."""
    output = params.resolved_output()
    try:
        image_store.check_writable(output)
    except ValueError as exc:
        raise ParamsError([f"output: {exc}"]) from None
    return output


def place_output(image: ImageArtifact, output: Path) -> None:
    """Point the requested output path at this run's image; the flow calls it after
    the stage, whether the image was built or came from cache, so the path holds
    what the run reports."""
    image_store.point(output, Path(image.path))


async def served_from_cache(params: BuildParams, source: SourceInfo, version: str) -> bool:
    """Whether Prefect's result store can serve every engine stage of this build:
    each platform's compile, and an assemble whose tarball is still in place.

    Uses the stages' own cache keys against the run's result store, so the answer
    is the one the tasks will get; publishing always needs the engine.
    """
    from prefect.results import get_result_store

    from tasks.compile import compile_binary, compile_cache_key

    if params.force_rebuild or params.image_refs:
        why = "force_rebuild is set" if params.force_rebuild else "publishing needs the engine"
        progress.cache_decision(f"{why}: opening an engine session")
        return False
    flow_store = get_result_store()

    async def cached(task: Any, key: str) -> Any:
        store = await flow_store.aupdate_for_task(task)  # where that task keeps results
        try:
            return (await store.aread(key)).result
        except Exception:  # missing or unreadable: the task will build it
            return None

    binaries = []
    for platform in params.platforms:
        inputs = {"source": source, "params": params, "platform": platform, "version": version}
        key = compile_cache_key(None, inputs)  # type: ignore[arg-type]
        binary = await cached(compile_binary, key)
        if binary is None or not all(
            available(key, size, flow_store.result_storage) for key, size in binary.stored()
        ):
            progress.cache_decision(
                f"compile {platform} is not in Prefect's cache (key {key[:16]}…): "
                "opening an engine session"
            )
            return False
        binaries.append(binary)
    inputs = {"source": source, "params": params, "binaries": binaries, "version": version}
    key = assemble_cache_key(None, inputs)  # type: ignore[arg-type]
    image = await cached(assemble_image, key)
    hit = image is not None and still_valid(image)
    progress.cache_decision(
        f"every engine stage is in Prefect's cache (assemble runtime key {key[:16]}…): "
        "no engine session"
        if hit
        else f"assemble runtime is not in Prefect's cache (key {key[:16]}…): "
        "opening an engine session"
    )
    return hit
