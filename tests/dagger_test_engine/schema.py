"""The Dagger API schema, derived from the installed dagger-io SDK.

The SDK introspects the engine on connect and builds every query against that
schema, so the test engine must serve exactly the API the pinned SDK was generated
from. Rather than vendoring an SDL that can drift from the SDK, the schema is
rebuilt from the SDK's generated client (``dagger/client/gen.py``): each class is a
GraphQL type, each ``_select("field", [Arg("name", value, default)])`` a field, and
the Python annotations give the argument and return types. Object arguments travel
as ``<Type>ID`` scalars, as they do for clients older than v0.22.
"""

from __future__ import annotations

import ast
import functools
import json
from dataclasses import dataclass, field
from pathlib import Path

import dagger
from graphql import GraphQLSchema, build_schema

SCALAR_MAP = {"str": "String", "int": "Int", "bool": "Boolean", "float": "Float"}


@dataclass
class ArgDef:
    name: str
    type: str
    default: str | None  # GraphQL literal, or None when required / no default


@dataclass
class FieldDef:
    name: str
    type: str
    args: list[ArgDef] = field(default_factory=list)


@dataclass
class TypeDef:
    name: str
    kind: str  # object | interface | scalar | enum | input
    fields: dict[str, FieldDef] = field(default_factory=dict)
    values: list[str] = field(default_factory=list)
    input_fields: list[ArgDef] = field(default_factory=list)


def _gen_path() -> Path:
    return Path(dagger.__file__).parent / "client" / "gen.py"


def _ann_text(node: ast.expr | None) -> str:
    if node is None:
        return ""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    return ast.unparse(node)


class _Deriver:
    def __init__(self, tree: ast.Module) -> None:
        self.module = tree
        self.types: dict[str, TypeDef] = {}
        self.class_kind: dict[str, str] = {}
        self.graphql_name: dict[str, str] = {}
        for node in tree.body:
            if isinstance(node, ast.ClassDef):
                bases = [ast.unparse(b) for b in node.bases]
                kind = ""
                if "Scalar" in bases:
                    kind = "scalar"
                elif "Enum" in bases:
                    kind = "enum"
                elif "Input" in bases:
                    kind = "input"
                elif node.name.startswith("_") and node.name.endswith("Client"):
                    kind = "interface"
                elif "Type" in bases or "Root" in bases:
                    kind = "object"
                elif "Query" in bases:
                    kind = "alias"
                self.class_kind[node.name] = kind
                self.graphql_name[node.name] = self._graphql_name(node)

    @staticmethod
    def _graphql_name(node: ast.ClassDef) -> str:
        for item in node.body:
            if isinstance(item, ast.FunctionDef) and item.name == "_graphql_name":
                for sub in ast.walk(item):
                    if isinstance(sub, ast.Return) and isinstance(sub.value, ast.Constant):
                        return str(sub.value.value)
        return node.name

    # ---- type expressions -------------------------------------------------------
    def _split_optional(self, text: str) -> tuple[str, bool]:
        parts = [p.strip() for p in text.split("|")]
        nullable = "None" in parts
        parts = [p for p in parts if p != "None"]
        return " | ".join(parts), nullable

    def gql_type(self, text: str, owner: str, *, as_input: bool) -> str:
        text = text.strip().strip('"').strip("'")
        inner, nullable = self._split_optional(text)
        inner = inner.strip().strip('"').strip("'")
        if inner.startswith("list[") and inner.endswith("]"):
            elem = self.gql_type(inner[5:-1], owner, as_input=as_input)
            base = f"[{elem}]"
        elif inner == "Self":
            base = self.graphql_name.get(owner, owner) + ("ID" if as_input else "")
        elif inner in SCALAR_MAP:
            base = SCALAR_MAP[inner]
        elif inner == "Type":
            base = "ID"
        elif self.class_kind.get(inner) == "object":
            gname = self.graphql_name[inner]
            base = f"{gname}ID" if as_input else gname
        elif inner in self.class_kind:
            base = self.graphql_name.get(inner, inner)
        else:
            base = inner
        return base if nullable else f"{base}!"

    # ---- classes ----------------------------------------------------------------
    def derive(self) -> dict[str, TypeDef]:
        for node in self.module.body:
            if not isinstance(node, ast.ClassDef):
                continue
            kind = self.class_kind.get(node.name, "")
            name = self.graphql_name[node.name]
            if kind == "scalar":
                self.types[name] = TypeDef(name, "scalar")
            elif kind == "enum":
                values = [
                    t.id
                    for item in node.body
                    if isinstance(item, ast.Assign)
                    for t in item.targets
                    if isinstance(t, ast.Name)
                ]
                self.types[name] = TypeDef(name, "enum", values=values)
            elif kind == "input":
                fields = []
                for item in node.body:
                    if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                        t = self.gql_type(_ann_text(item.annotation), node.name, as_input=True)
                        fields.append(ArgDef(_camel(item.target.id), t, None))
                self.types[name] = TypeDef(name, "input", input_fields=fields)
            elif kind in ("object", "interface"):
                td = TypeDef(name, kind)
                for item in node.body:
                    if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef):
                        fd = self._field(item, node.name)
                        if fd:
                            td.fields[fd.name] = fd
                self.types[name] = td
        for td in list(self.types.values()):
            id_field = td.fields.get("id")
            if id_field and id_field.type.removesuffix("!") not in self.types:
                scalar = id_field.type.removesuffix("!")
                if scalar != "ID":
                    self.types[scalar] = TypeDef(scalar, "scalar")
        return self.types

    def _field(self, fn: ast.FunctionDef | ast.AsyncFunctionDef, owner: str) -> FieldDef | None:
        select_name = None
        sync_name = None
        arg_calls: list[ast.Call] = []
        for sub in ast.walk(fn):
            if isinstance(sub, ast.Call) and isinstance(sub.func, ast.Attribute):
                if sub.func.attr == "_select" and sub.args:
                    c = sub.args[0]
                    if isinstance(c, ast.Constant):
                        select_name = str(c.value)
                elif sub.func.attr == "execute_sync" and len(sub.args) >= 2:
                    c = sub.args[1]
                    if isinstance(c, ast.Constant):
                        sync_name = str(c.value)
            if (
                isinstance(sub, ast.Call)
                and isinstance(sub.func, ast.Name)
                and sub.func.id == "Arg"
            ):
                arg_calls.append(sub)
        gql_field = select_name or sync_name
        if not gql_field:
            return None
        params = {
            a.arg: _ann_text(a.annotation)
            for a in [*fn.args.args, *fn.args.kwonlyargs]
            if a.arg != "self"
        }
        args: list[ArgDef] = []
        for call in arg_calls:
            gname = call.args[0].value  # type: ignore[attr-defined]
            pname = _param_name(call.args[1])
            ann = params.get(pname, "str")
            has_default = len(call.args) >= 3
            ann_inner, _ = self._split_optional(ann.strip('"'))
            gtype = self.gql_type(ann_inner, owner, as_input=True)
            default = None
            if has_default:
                gtype = gtype.removesuffix("!")
                default = _literal(call.args[2])
            args.append(ArgDef(gname, gtype, default))
        ret = _ann_text(fn.returns)
        if sync_name and self.class_kind.get(owner) == "interface":
            rtype = "ID!"
        elif sync_name:
            rtype = f"{self.graphql_name.get(owner, owner)}ID!"
        elif gql_field == "id" and owner in self.class_kind and self.class_kind[owner] == "object":
            rtype = f"{self.graphql_name[owner]}ID!"
        elif gql_field == "id":
            rtype = "ID!"
        else:
            rtype = self.gql_type(ret, owner, as_input=False)
        return FieldDef(gql_field, rtype, args)


def _param_name(node: ast.expr) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.IfExp):
        return _param_name(node.orelse)
    return ""


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(p.title() for p in rest)


def _literal(node: ast.expr) -> str | None:
    if isinstance(node, ast.Constant):
        if node.value is None:
            return None
        if isinstance(node.value, bool):
            return "true" if node.value else "false"
        if isinstance(node.value, str):
            return json.dumps(node.value)
        return str(node.value)
    if isinstance(node, ast.List):
        return "[]"
    if isinstance(node, ast.Attribute):
        return node.attr
    return None


def _render(types: dict[str, TypeDef]) -> str:
    out: list[str] = []
    interfaces = {n: t for n, t in types.items() if t.kind == "interface"}
    for name in sorted(types):
        t = types[name]
        if t.kind == "scalar":
            out.append(f"scalar {name}")
        elif t.kind == "enum":
            out.append(f"enum {name} {{ {' '.join(t.values)} }}")
        elif t.kind == "input":
            body = "\n".join(f"  {f.name}: {f.type}" for f in t.input_fields)
            out.append(f"input {name} {{\n{body}\n}}")
        elif t.kind in ("object", "interface"):
            if not t.fields:
                continue
            impl = ""
            if t.kind == "object":
                names = [
                    iname
                    for iname, it in interfaces.items()
                    if it.fields and set(it.fields) <= set(t.fields)
                ]
                if names:
                    impl = " implements " + " & ".join(sorted(names))
            lines = []
            for f in t.fields.values():
                args = ""
                if f.args:
                    rendered = []
                    for a in f.args:
                        d = f" = {a.default}" if a.default is not None else ""
                        rendered.append(f"{a.name}: {a.type}{d}")
                    args = "(" + ", ".join(rendered) + ")"
                lines.append(f"  {f.name}{args}: {f.type}")
            out.append(
                f"{t.kind if t.kind == 'interface' else 'type'} {name}{impl} {{\n"
                + "\n".join(lines)
                + "\n}"
            )
    out.append("schema { query: Query }")
    return "\n\n".join(out) + "\n"


@functools.cache
def sdl() -> str:
    """The SDL of the installed SDK's API (cached: deriving it parses a 16k-line file)."""
    tree = ast.parse(_gen_path().read_text())
    return _render(_Deriver(tree).derive())


@functools.cache
def schema() -> GraphQLSchema:
    # assume_valid: clients older than v0.22 see `id: ContainerID!` on objects that
    # implement `Node { id: ID! }`; the real engine serves that too, and graphql-core's
    # strict interface check would refuse it.
    return build_schema(sdl(), assume_valid=True)
