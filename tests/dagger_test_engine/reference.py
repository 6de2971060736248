"""The real engine's schema, which every query the test engine answers must pass.

The test engine serves the schema of the installed SDK (``schema.py``), so the
SDK can call all it knows. But users run a real engine, which may be older than
the SDK: dagger-io 0.21.11 knows ``Container.withMountedVolume`` and ``Volume``,
which the v0.21.8 engine does not have, and would refuse. So each query is also
validated against the real engine's own schema, and one the real engine would
refuse is refused here with that reason: a product change that calls something
only a newer engine has fails the suite, instead of the user's build.

``reference/dagger-v0.21.8-schema.graphqls`` is dagger/dagger v0.21.8's
``docs/docs-graphql/schema.graphqls`` as published (Apache License 2.0), unchanged.
That file is the schema a current client sees. A client older than v0.22 (every
dagger-io 0.21) also gets, per ``core/schema/legacy_id.go``, a ``FooID`` scalar
and a ``loadFooFromID(id: FooID!): Foo!`` root field for every type with an ID
(objects implementing ``Node``, and interfaces); they are added here the same way.
"""

from __future__ import annotations

import functools
from pathlib import Path

from graphql import (
    DocumentNode,
    GraphQLInterfaceType,
    GraphQLObjectType,
    GraphQLSchema,
    build_schema,
    validate,
)
from graphql.validation import (
    FieldsOnCorrectTypeRule,
    KnownArgumentNamesRule,
    KnownTypeNamesRule,
    ProvidedRequiredArgumentsRule,
    ScalarLeafsRule,
    ValuesOfCorrectTypeRule,
)

ENGINE_VERSION = "v0.21.8"
SDL = Path(__file__).parent / "reference" / f"dagger-{ENGINE_VERSION}-schema.graphqls"


@functools.cache
def reference_schema() -> GraphQLSchema:
    """The v0.21.8 engine's schema as it serves it to a dagger-io 0.21 client."""
    sdl = SDL.read_text(encoding="utf-8")
    base = build_schema(sdl)
    node = base.type_map.get("Node")
    idable = sorted(
        name
        for name, t in base.type_map.items()
        if not name.startswith("_")
        and (
            (isinstance(t, GraphQLObjectType) and node in t.interfaces)
            or (isinstance(t, GraphQLInterfaceType) and name != "Node")
        )
    )
    legacy = [f"scalar {name}ID" for name in idable if f"{name}ID" not in base.type_map]
    fields = [f"  load{name}FromID(id: {name}ID!): {name}!" for name in idable]
    extension = "\n".join([*legacy, "extend type Query {", *fields, "}"])
    return build_schema(f"{sdl}\n{extension}\n")


# The rules where an older schema can refuse what a newer one takes: a field or
# argument it lacks, an argument it requires, a field whose type differs, an enum
# value it lacks. The rest of GraphQL's validation (fragments, variables, names)
# ran against the served schema already, and would only double the time spent.
SCHEMA_RULES = (
    FieldsOnCorrectTypeRule,
    KnownArgumentNamesRule,
    ProvidedRequiredArgumentsRule,
    ScalarLeafsRule,
    ValuesOfCorrectTypeRule,
    KnownTypeNamesRule,
)


def refusal(doc: DocumentNode) -> str | None:
    """Why the real engine would refuse the query, or None if it would take it."""
    errors = validate(reference_schema(), doc, SCHEMA_RULES)
    if not errors:
        return None
    return (
        f"the Dagger engine {ENGINE_VERSION} would refuse this query "
        f"(tests/dagger_test_engine/reference.py): {errors[0].message}"
    )
