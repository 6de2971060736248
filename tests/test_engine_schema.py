"""The test engine serves the API of the installed SDK, field for field.

The schema is derived from the SDK's generated client; this test reads that
client independently (every ``_select("field")`` of every generated class) and
checks the served schema has each field, so a newer SDK cannot silently meet a
schema that lacks what it calls.
"""

from __future__ import annotations

import ast
import asyncio
from pathlib import Path

import dagger
import pytest
from dagger import dag
from graphql import GraphQLNonNull, get_named_type, parse

from tests.dagger_test_engine.reference import refusal
from tests.dagger_test_engine.schema import schema
from tests.dagger_test_engine.server import TestEngine


def generated_selects() -> dict[str, set[str]]:
    tree = ast.parse((Path(dagger.__file__).parent / "client" / "gen.py").read_text())
    out: dict[str, set[str]] = {}
    for node in tree.body:
        if not isinstance(node, ast.ClassDef) or node.name.startswith("_"):
            continue
        names = {
            sub.args[0].value
            for sub in ast.walk(node)
            if isinstance(sub, ast.Call)
            and isinstance(sub.func, ast.Attribute)
            and sub.func.attr == "_select"
            and sub.args
            and isinstance(sub.args[0], ast.Constant)
        }
        if names:
            out[node.name] = names
    return out


def test_every_field_the_sdk_selects_is_served() -> None:
    s = schema()
    selects = generated_selects()
    assert len(selects) > 40 and "withExec" in selects["Container"]
    missing = [
        f"{cls}.{name}"
        for cls, names in selects.items()
        for name in names
        if name not in s.get_type("Query" if cls == "Client" else cls).fields  # type: ignore[union-attr]
    ]
    assert missing == []


def test_ids_loaders_and_defaults_match_the_engine_conventions() -> None:
    s = schema()
    query = s.query_type
    assert query is not None
    assert "loadContainerFromID" in query.fields and "node" in query.fields
    container = s.get_type("Container")
    assert get_named_type(container.fields["id"].type).name == "ContainerID"  # type: ignore[union-attr]
    with_exec = container.fields["withExec"]  # type: ignore[union-attr]
    assert isinstance(with_exec.args["args"].type, GraphQLNonNull)
    expect_default = with_exec.args["expect"].ast_node.default_value  # what introspection shows
    assert expect_default is not None and expect_default.value == "SUCCESS"
    with_file = container.fields["withFile"]  # type: ignore[union-attr]
    assert get_named_type(with_file.args["source"].type).name == "FileID"
    assert "Node" in {i.name for i in container.interfaces}  # type: ignore[union-attr]


def test_a_query_the_real_engine_would_refuse_is_refused(dagger_engine: TestEngine) -> None:
    """The SDK is newer than the engine of reference: dagger-io 0.21.11 can call
    ``Container.withMountedVolume``, which the v0.21.8 engine has not got. The
    test engine serves it (the SDK's schema) but refuses the query as the real
    engine would, through the real SDK too; what v0.21.8 serves to a 0.21 client
    (``loadContainerFromID``, from core/schema/legacy_id.go) passes."""
    volume = '{ container { withMountedVolume(path: "/v", volume: "x") { id } } }'
    assert "withMountedVolume" in schema().get_type("Container").fields  # type: ignore[union-attr]
    answer = dagger_engine.run_query(volume)
    assert answer["data"] is None
    assert answer["errors"][0]["message"].startswith(
        "the Dagger engine v0.21.8 would refuse this query (tests/dagger_test_engine/"
        "reference.py): Cannot query field 'withMountedVolume' on type 'Container'."
    )
    assert refusal(parse('{ loadContainerFromID(id: "x") { id } }')) is None
    assert refusal(parse('{ container { from(address: "alpine") { id } } }')) is None

    async def mount_a_volume() -> str:
        async with dagger.connection(dagger.Config(retry=None)):
            volume = dag.sshfs_volume("user@127.0.0.1:/srv", dag.set_secret("key", "x"))
            return await dag.container().with_mounted_volume("/v", volume).id()

    with pytest.raises(dagger.QueryError, match=r"engine v0\.21\.8 would refuse this query"):
        asyncio.run(mount_a_volume())
