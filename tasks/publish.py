"""Stage 4, publish: one image index, pushed to every requested reference.

The image is imported from the assembled OCI tarball, one container per
platform (each from its own one-image layout cut out of the tarball), so
publishing needs no compile and works from a cached assemble. With
no references the tarball is the result and nothing is pushed.

Registry credentials, one for every registry published to or one per registry
host, come from a Prefect Secret block or for local runs from
``GOBUILD_REGISTRY_USERNAME``/``GOBUILD_REGISTRY_PASSWORD`` (``tasks/registry_auth.py``).
A password goes to the engine only as a Dagger secret (``set_secret``), never as a
parameter, log line or artifact.
"""

from __future__ import annotations

import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from prefect import task

from tasks import progress
from tasks.assemble import ImageArtifact
from tasks.oci_layout import split_by_platform
from tasks.params import BuildParams
from tasks.registry_auth import load_registry_auth, registry_host, with_registry_auth
from tasks.retries import retry_options
from tasks.session import engine_ready
from tasks.source import SourceInfo

if TYPE_CHECKING:
    import dagger


def image_variants(image: ImageArtifact, workdir: Path) -> list[dagger.Container]:
    """One container per platform, each imported from its own one-image layout,
    with its manifest's annotations given back (an import drops them), so the
    registry gets the manifests the tarball holds.

    Importing every platform from the one multi-platform tarball would let the
    engine's ``platforms.Only`` match pick a neighbour (amd64 takes 386, arm/v7
    takes arm/v6); see :mod:`tasks.oci_layout`. The chains are lazy.
    """
    import dagger
    from dagger import dag

    layouts = split_by_platform(Path(image.path), workdir)
    missing = sorted(set(image.platforms) - set(layouts))
    if missing:
        raise ValueError(f"{image.path} holds no image for {', '.join(missing)}")
    variants = []
    for p in image.platforms:
        layout = layouts[p]
        ctr = dag.container(platform=dagger.Platform(p)).import_(dag.host().file(str(layout.path)))
        for key, value in sorted(layout.annotations.items()):
            ctr = ctr.with_annotation(key, value)
        variants.append(ctr)
    return variants


@task(name="publish", **retry_options())
async def publish_image(
    params: BuildParams, image: ImageArtifact, source: SourceInfo
) -> dict[str, str]:
    """-> each requested reference, in order, mapped to the engine's answer: the
    normalised name and the digest the registry received
    (``team/app:1`` -> ``docker.io/team/app:1@sha256:…``); empty when none was asked
    for. That digest is the registry's, and need not equal the exported tarball's."""
    refs = params.publish_refs(commit=source.commit, now=datetime.now(UTC))
    if not refs:
        return {}
    await engine_ready()
    auth = await load_registry_auth(params)
    with tempfile.TemporaryDirectory(prefix="gobuild-publish-") as tmp:
        variants = image_variants(image, Path(tmp))
        published = {}
        for ref in refs:
            host = registry_host(ref)
            if auth is not None and auth.shared is None and host not in auth.by_host:
                progress.note(
                    f"registry_secret_block {params.registry_secret_block!r} has no "
                    f"credential for {host}: pushing {ref} without one"
                )
            ctr = with_registry_auth(variants[0], host, auth)
            async with progress.step("publish", f"push {ref}") as push:
                published[ref] = await ctr.publish(ref, platform_variants=variants[1:])
                push.outcome = published[ref]  # the name and digest the registry got
    return published
