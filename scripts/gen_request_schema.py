#!/usr/bin/env python3
"""Generates src/protocol/bounds/schema.rs: the wire layout of every request message of
kafka-protocol, read from the crate's own generated decoders.

kafka-protocol has no runtime schema, and its decoders size arrays from the wire before
reading them (`Vec::with_capacity(n)`), so Strata walks each request body with this table
first (src/protocol/bounds/mod.rs). The table is derived from the crate's
`impl Decodable for X { fn decode(..) }` blocks in src/messages/*_request.rs, so that it
reads exactly what the crate reads, in the same order, under the same version conditions.

Usage: scripts/gen_request_schema.py [path/to/kafka-protocol-0.18.0] > src/protocol/bounds/schema.rs
(without a path, the crate is looked up in ~/.cargo/registry/src/*/). The unit tests in
src/protocol/bounds/tests.rs check the table against the crate's encoders for every API and
version.
"""

from __future__ import annotations

import glob
import os
import re
import sys

CRATE_VERSION = "0.18.0"
MAX_VERSION = 63  # versions are bits of a u64
ALL = (1 << (MAX_VERSION + 1)) - 1

TOKEN = re.compile(
    r"\s+|//[^\n]*|\"(?:\\.|[^\"\\])*\"|[A-Za-z_]\w*|\d+|::|=>|>=|<=|==|!=|&&|\|\||[{}()\[\];,.?!=<>:|&*+-]"
)

PRIMS = {
    "Boolean": "Bool",
    "Int8": "Int8",
    "Int16": "Int16",
    "UInt16": "UInt16",
    "Int32": "Int32",
    "Int64": "Int64",
    "Float64": "Float64",
    "Uuid": "Uuid",
    "String": "String",
    "CompactString": "CompactString",
    "Bytes": "Bytes",
    "CompactBytes": "CompactBytes",
}
# Array elements that are not structs, and the Rust type each decodes into by default.
ELEMS = {"Int8", "Int32", "Int64", "Uuid", "String", "CompactString"}


def die(msg: str):
    sys.exit(f"gen_request_schema: {msg}")


def tokenize(src: str) -> list[str]:
    out, pos = [], 0
    while pos < len(src):
        m = TOKEN.match(src, pos)
        if not m:
            die(f"cannot tokenize at {src[pos:pos + 40]!r}")
        t = m.group(0)
        pos = m.end()
        if not t.isspace() and not t.startswith("//"):
            out.append(t)
    return out


def block_end(src: str, open_idx: int) -> int:
    """Index just past the brace matching src[open_idx] == '{'."""
    depth = 0
    for i in range(open_idx, len(src)):
        if src[i] == "{":
            depth += 1
        elif src[i] == "}":
            depth -= 1
            if depth == 0:
                return i + 1
    die("unbalanced braces")


def cond_mask(tokens: list[str]) -> int:
    """A condition on `version` as the set of versions (a bit mask) where it holds."""
    allowed = {"version", ">=", "<=", "==", "!=", "<", ">", "&&", "||", "(", ")"}
    for t in tokens:
        if t not in allowed and not t.isdigit():
            die(f"unexpected token {t!r} in condition {' '.join(tokens)}")
    expr = " ".join(tokens).replace("&&", "and").replace("||", "or")
    mask = 0
    for v in range(MAX_VERSION + 1):
        if eval(expr, {"__builtins__": {}}, {"version": v}):  # noqa: S307 - tokens checked above
            mask |= 1 << v
    return mask


class Struct:
    def __init__(self, module: str, name: str, fields: dict[str, str]):
        self.module = module
        self.name = name
        self.fields = fields  # field name -> Rust type
        self.versions = 0
        self.flexible = 0
        self.ops: list[tuple[int, tuple]] = []
        self.tags: list[tuple[int, int, list]] = []  # (tag, valid versions, ops)


class Parser:
    """Walks the tokens of one decode function, tracking the version mask under which each
    statement runs."""

    def __init__(self, st: Struct, toks: list[str]):
        self.st = st
        self.t = toks
        self.i = 0
        self.target = None  # the variable the next decode call assigns
        self.bails = 0  # versions for which the current context bails

    def peek(self, k=0):
        return self.t[self.i + k] if self.i + k < len(self.t) else None

    def expect(self, tok):
        if self.peek() != tok:
            die(f"{self.st.name}: expected {tok!r}, found {self.peek()!r} at {self.t[self.i:self.i + 12]}")
        self.i += 1

    def block(self, mask: int, ops: list):
        """Parses `{ ... }` starting at '{'."""
        self.expect("{")
        while self.peek() != "}":
            self.statement(mask, ops)
        self.expect("}")

    def statement(self, mask: int, ops: list):
        t = self.peek()
        if t == "if":
            self.if_chain(mask, ops)
        elif t == "bail":
            self.bails |= mask
            self.skip_to(";")
        elif t == "let":
            self.i += 1
            if self.peek() == "mut":
                self.i += 1
            self.target = self.peek()
            self.skip_to("=")
        elif t == "match" and self.peek(1) == "tag":
            self.match_tag(mask)
        elif t == "types":
            self.decode_call(mask, ops)
        elif t == "{":
            self.block(mask, ops)
        elif t is not None and re.fullmatch(r"[a-z_]\w*", t) and self.peek(1) == "=":
            self.target = t
            self.i += 2
        else:
            self.i += 1

    def skip_to(self, tok):
        while self.peek() != tok:
            if self.peek() is None:
                die(f"{self.st.name}: ran off the end looking for {tok!r}")
            self.i += 1
        self.i += 1

    def if_chain(self, mask: int, ops: list):
        self.expect("if")
        start = self.i
        while self.peek() != "{":
            self.i += 1
        c = cond_mask(self.t[start:self.i])
        self.block(mask & c, ops)
        if self.peek() == "else":
            self.i += 1
            if self.peek() == "if":
                self.if_chain(mask & ~c, ops)
            else:
                self.block(mask & ~c, ops)

    def match_tag(self, mask: int):
        self.expect("match")
        self.expect("tag")
        self.expect("{")
        while self.peek() != "}":
            arm = self.peek()
            self.i += 1
            self.expect("=>")
            if arm == "_":
                self.block(mask, [])
                continue
            if not arm.isdigit():
                die(f"{self.st.name}: unexpected tag arm {arm!r}")
            tag_ops: list = []
            saved = self.bails
            self.bails = 0
            self.block(mask, tag_ops)
            valid = mask & ~self.bails
            self.bails = saved
            self.st.tags.append((int(arm), valid, tag_ops))
        self.expect("}")

    def decode_call(self, mask: int, ops: list):
        start = self.i
        while not (self.peek() == "decode" and self.t[self.i - 1] == "."):
            self.i += 1
        expr = "".join(self.t[start:self.i - 1])
        self.expect_call_end()
        target = self.target
        if target in ("num_tagged_fields",):
            if expr != "types::UnsignedVarInt":
                die(f"{self.st.name}: odd tagged field count {expr}")
            self.st.flexible |= mask
            return
        if target in ("tag", "size"):
            return
        ops.append((mask, self.kind(expr, target)))

    def expect_call_end(self):
        # `.decode(buf)?` followed by `;`, `}` or nothing: consume `decode ( buf ) ?`
        for tok in ("decode", "(", "buf", ")", "?"):
            self.expect(tok)
        if self.peek() == ";":
            self.i += 1

    def field_type(self, target: str) -> str:
        ty = self.st.fields.get(target)
        if ty is None:
            die(f"{self.st.name}: no field {target!r}")
        return ty

    def kind(self, expr: str, target: str) -> tuple:
        m = re.fullmatch(r"types::(\w+)", expr)
        if m and m.group(1) in PRIMS:
            return ("prim", PRIMS[m.group(1)])
        m = re.fullmatch(r"types::(Struct|OptionStruct)\{version\}", expr)
        if m:
            return (m.group(1), inner_type(self.field_type(target)))
        m = re.fullmatch(r"types::(Array|CompactArray)\(types::(\w+)(\{version\})?\)", expr)
        if m:
            elem_ty = inner_type(self.field_type(target))
            if m.group(2) == "Struct":
                return (m.group(1), "struct", elem_ty)
            if m.group(2) not in ELEMS:
                die(f"{self.st.name}.{target}: unsupported array element {m.group(2)}")
            return (m.group(1), m.group(2), elem_ty)
        die(f"{self.st.name}.{target}: unsupported decode expression {expr}")


def inner_type(ty: str) -> str:
    """`Option<Vec<super::TopicName>>` -> `super::TopicName`."""
    while True:
        m = re.fullmatch(r"(?:Option|Vec)<(.+)>", ty)
        if not m:
            return ty
        ty = m.group(1)


def rust_path(module: str, ty: str, local: set[str]) -> str:
    """The path Strata names a message type by, for `size_of`."""
    if ty.startswith("super::"):
        return "m::" + ty[len("super::"):]
    if ty in local:
        return f"m::{module}::{ty}"
    if ty == "StrBytes":
        return "StrBytes"
    if ty == "Uuid":
        return "[u8; 16]"
    if ty in ("i8", "i16", "i32", "i64", "u16", "f64", "bool"):
        return ty
    die(f"{module}: unknown type {ty}")


def parse_module(path: str) -> list[Struct]:
    module = os.path.basename(path)[:-3]
    src = open(path).read()
    structs: dict[str, Struct] = {}
    for m in re.finditer(r"^pub struct (\w+) \{\n", src, re.M):
        body = src[m.end():block_end(src, m.end() - 2)]
        fields = dict(re.findall(r"^    pub (\w+): (.+),$", body, re.M))
        structs[m.group(1)] = Struct(module, m.group(1), fields)
    order = []
    for m in re.finditer(r"^impl Decodable for (\w+) \{\n", src, re.M):
        st = structs.get(m.group(1))
        if st is None:
            die(f"{module}: Decodable for unknown struct {m.group(1)}")
        fn = src.index("fn decode", m.end())
        open_idx = src.index("{", fn)
        body = src[open_idx:block_end(src, open_idx)]
        p = Parser(st, tokenize(body))
        p.block(ALL, st.ops)
        st.versions = ALL & ~p.bails
        if st.versions == 0:
            die(f"{module}::{st.name}: no valid version")
        order.append(st)
    return order


NUMBERS: dict[str, str] = {}  # ApiKey variant -> its number


def api_keys(crate: str) -> dict[str, str]:
    """Request struct name -> ApiKey variant."""
    src = open(os.path.join(crate, "src", "messages.rs")).read()
    found = re.findall(r"ApiKey::(\w+) => \{?\s*(\w+Request)::header_version", src)
    enum = re.search(r"pub enum ApiKey \{(.*?)\n\}", src, re.S)
    variants = dict(re.findall(r"^    (\w+) = (\d+),$", enum.group(1), re.M)) if enum else {}
    if not variants or sorted(k for k, _ in found) != sorted(variants):
        die("the request struct of some ApiKey variants is not found in messages.rs")
    NUMBERS.update(variants)
    return {req: key for key, req in found}


def emit(structs: list[Struct], keys: dict[str, str]) -> str:
    index = {(s.module, s.name): i for i, s in enumerate(structs)}
    local_by_module: dict[str, set[str]] = {}
    for s in structs:
        local_by_module.setdefault(s.module, set()).add(s.name)

    def kind(s: Struct, k: tuple) -> str:
        local = local_by_module[s.module]
        if k[0] == "prim":
            return k[1]
        if k[0] in ("Struct", "OptionStruct"):
            if k[1] not in local:
                die(f"{s.name}: struct {k[1]} not in {s.module}")
            return f"{k[0]}({index[(s.module, k[1])]})"
        arr, elem, ty = k
        if elem == "struct":
            if ty not in local:
                die(f"{s.name}: element {ty} not in {s.module}")
            return f"{arr}(Elem::Struct({index[(s.module, ty)]}))"
        return f"{arr}(Elem::{elem}(size_of::<{rust_path(s.module, ty, local)}>()))"

    def ops(s: Struct, lst) -> str:
        return ", ".join(
            f"op({mask & s.versions:#x}, {kind(s, k)})" for mask, k in lst if mask & s.versions
        )

    out = [
        "// generated by scripts/gen_request_schema.py from kafka-protocol "
        f"{CRATE_VERSION}; do not edit.",
        "// Every request message's decoder as a table: for each struct, the versions the crate",
        "// decodes, the versions with tagged fields, its size in memory, and its fields in wire",
        "// order, each with the versions it is present in (bit v = version v).",
        "",
        "use std::mem::size_of;",
        "",
        "use kafka_protocol::messages as m;",
        "use kafka_protocol::protocol::StrBytes;",
        "",
        "use super::{op, Elem, Kind::*, StructDef, TagDef};",
        "",
        f"pub(super) static STRUCTS: [StructDef; {len(structs)}] = [",
    ]
    for i, s in enumerate(structs):
        tags = ", ".join(
            f"TagDef {{ tag: {tag}, versions: {valid & s.versions:#x}, fields: &[{ops(s, tops)}] }}"
            for tag, valid, tops in s.tags
        )
        out.append(f"    // {i}")
        out.append("    StructDef {")
        out.append(f'        name: "{s.module}::{s.name}",')
        out.append(f"        versions: {s.versions:#x},")
        out.append(f"        flexible: {s.flexible & s.versions:#x},")
        out.append(f"        size: size_of::<m::{s.module}::{s.name}>(),")
        out.append(f"        fields: &[{ops(s, s.ops)}],")
        out.append(f"        tags: &[{tags}],")
        out.append("    },")
    out.append("];")
    out.append("")
    out.append("/// The request struct of each API key, by key.")
    pairs = []
    for s in structs:
        if s.name in keys and s.module == f"{snake(keys[s.name])}_request":
            pairs.append((keys[s.name], index[(s.module, s.name)]))
    if len(pairs) != len(keys):
        missing = set(keys.values()) - {k for k, _ in pairs}
        die(f"API keys without a request struct: {sorted(missing)}")
    out.append(f"pub(super) static REQUESTS: [(m::ApiKey, u16); {len(pairs)}] = [")
    for key, i in pairs:
        out.append(f"    (m::ApiKey::{key}, {i}), // {NUMBERS[key]}")
    out.append("];")
    out.append("")
    return "\n".join(out)


def snake(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", name).lower()


def find_crate() -> str:
    if len(sys.argv) > 1:
        return sys.argv[1]
    home = os.path.expanduser("~/.cargo/registry/src")
    found = sorted(glob.glob(os.path.join(home, "*", f"kafka-protocol-{CRATE_VERSION}")))
    if not found:
        die(f"kafka-protocol-{CRATE_VERSION} not found under {home}")
    return found[0]


def main():
    crate = find_crate()
    structs = []
    for path in sorted(glob.glob(os.path.join(crate, "src", "messages", "*_request.rs"))):
        structs.extend(parse_module(path))
    if max(s.versions.bit_length() for s in structs) > MAX_VERSION + 1:
        die("a version above 63")
    sys.stdout.write(emit(structs, api_keys(crate)))


if __name__ == "__main__":
    main()
