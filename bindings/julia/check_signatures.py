#!/usr/bin/env python3
"""Checks bindings/julia/DashAttn.jl against include/dashattn.h (Python 3 stdlib only).

Julia cannot run here, so this is the binding's safety net. It parses
  - the header: function prototypes, typedefs, #define integer constants and the
    typedef'd structs;
  - DashAttn.jl: every `ccall((:name, lib), Ret, (ArgTypes...,), args...)`, the
    `const X = ...` aliases and constants, and the `struct` definitions;
and fails (exit 1) when
  - a ccall names a function the header lacks, or its return type, argument count or any
    argument type disagrees with the prototype, or it passes a different number of values
    than it declares types;
  - a header function has no ccall;
  - a struct (dashattn_tensor, dashattn_config, dashattn_context_options) differs in field
    count, order, names or types, or the opaque dashattn_context is missing;
  - a DASHATTN_* integer constant of the header is missing in Julia or has another value.
It prints one line per failure and a summary "N passed, M failed".

Type correspondence (C on the left, after dropping `const` and `struct`):
  int32_t / dashattn_status  Int32, Cint          uint32_t  UInt32, Cuint
  int64_t                    Int64, Clonglong      size_t    Csize_t
  float                      Float32, Cfloat       double    Float64, Cdouble
  void (return)              Cvoid, Nothing        T*        Ptr{T} or Ref{T}
  char* / const char*        Cstring, Ptr{UInt8}, Ptr{Cchar}, Ptr{Int8}
  T name[N]                  NTuple{N,T}           struct S  the Julia struct named S
`void*` matches only Ptr{Cvoid}: an opaque or struct pointer must use its own type.

Usage: check_signatures.py [--header PATH] [--julia PATH] [--self-test] [-v]
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from dataclasses import dataclass, field

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", ".."))
STRUCTS = ("dashattn_tensor", "dashattn_config", "dashattn_context_options")
OPAQUE = ("dashattn_context",)


# ---------------------------------------------------------------------------------------
# C header


@dataclass
class CFunc:
    name: str
    ret: str
    args: list[tuple[str, str]]  # (canonical type, name)
    text: str


@dataclass
class Header:
    funcs: dict[str, CFunc] = field(default_factory=dict)
    duplicates: list[str] = field(default_factory=list)
    conflicts: list[str] = field(default_factory=list)
    typedefs: dict[str, str] = field(default_factory=dict)
    defines: dict[str, int] = field(default_factory=dict)
    structs: dict[str, list[tuple[str, str]]] = field(default_factory=dict)  # name -> [(name, type)]
    opaque: set[str] = field(default_factory=set)


def strip_c_comments(text: str) -> str:
    text = re.sub(r"/\*.*?\*/", " ", text, flags=re.S)
    return re.sub(r"//[^\n]*", "", text)


def c_canon(t: str, h: Header) -> str:
    """'const struct dashattn_tensor *' -> 'dashattn_tensor*', typedefs resolved."""
    t = re.sub(r"\b(const|struct|volatile)\b", " ", t)
    stars = t.count("*")
    base = " ".join(t.replace("*", " ").split())
    seen = set()
    while base in h.typedefs and base not in seen:
        seen.add(base)
        base = h.typedefs[base]
    return base + "*" * stars


def split_c_decl(decl: str) -> tuple[str, str]:
    """'const struct dashattn_tensor *q' -> ('const struct dashattn_tensor *', 'q')."""
    decl = decl.strip()
    m = re.match(r"^(.*?)(\w+)\s*$", decl, flags=re.S)
    if not m or not m.group(1).strip():
        return decl, ""
    return m.group(1), m.group(2)


def parse_header(text: str) -> Header:
    h = Header()
    for m in re.finditer(r"^\s*#\s*define\s+(DASHATTN_\w+)\s+\(?\s*(-?\d+)\s*\)?\s*$", text, flags=re.M):
        h.defines[m.group(1)] = int(m.group(2))
    body = strip_c_comments(text)
    body = re.sub(r"^\s*#.*$", "", body, flags=re.M)  # preprocessor lines
    body = body.replace('extern "C" {', "").replace('extern "C"', "")
    for m in re.finditer(r"typedef\s+([\w\s\*]+?)\s*\b(\w+)\s*;", body):
        src, name = m.group(1).strip(), m.group(2)
        if src.startswith("struct"):
            parts = src.split()
            if len(parts) == 2 and parts[1] == name:
                h.opaque.add(name)
            continue
        h.typedefs[name] = src
    for m in re.finditer(r"typedef\s+struct\s+(\w+)\s*\{(.*?)\}\s*(\w+)\s*;", body, flags=re.S):
        tag, fields_text, name = m.group(1), m.group(2), m.group(3)
        fields: list[tuple[str, str]] = []
        for decl in fields_text.split(";"):
            decl = " ".join(decl.split())
            if not decl:
                continue
            arr = re.match(r"^(.*?)\[\s*(\w+)\s*\]$", decl)
            n = None
            if arr:
                decl, n = arr.group(1), arr.group(2)
            t, fname = split_c_decl(decl)
            fields.append((fname, (t, n)))  # canonicalised below, once typedefs are known
        h.structs[name] = fields  # type: ignore[assignment]
        h.opaque.discard(name)
        _ = tag
    for name, fields in h.structs.items():
        canon = []
        for fname, (t, n) in fields:  # type: ignore[misc]
            ct = c_canon(t, h)
            if n is not None:
                size = h.defines.get(n, None) if not n.isdigit() else int(n)
                ct = f"{ct}[{size if size is not None else n}]"
            canon.append((fname, ct))
        h.structs[name] = canon
    # Prototypes: drop struct bodies first so their fields do not look like functions.
    protos = re.sub(r"typedef\s+struct\s+\w+\s*\{.*?\}\s*\w+\s*;", " ", body, flags=re.S)
    protos = re.sub(r"typedef[^;]*;", " ", protos)
    for m in re.finditer(r"([A-Za-z_][\w\s\*]*?)\b(dashattn_\w+)\s*\(([^()]*)\)\s*;", protos):
        ret, name, args_text = m.group(1), m.group(2), m.group(3)
        args: list[tuple[str, str]] = []
        a = " ".join(args_text.split())
        if a and a != "void":
            for decl in a.split(","):
                t, n = split_c_decl(decl)
                args.append((c_canon(t, h), n))
        f = CFunc(name, c_canon(ret, h), args, " ".join(m.group(0).split()))
        if name in h.funcs:
            h.duplicates.append(name)
            old = h.funcs[name]
            if (old.ret, [a for a, _ in old.args]) != (f.ret, [a for a, _ in f.args]):
                h.conflicts.append(name)
        else:
            h.funcs[name] = f
    return h


# ---------------------------------------------------------------------------------------
# Julia source


@dataclass
class CCall:
    name: str
    ret: str
    argtypes: list[str]
    nvalues: int
    line: int
    text: str


@dataclass
class Julia:
    ccalls: list[CCall] = field(default_factory=list)
    aliases: dict[str, str] = field(default_factory=dict)
    consts: dict[str, str] = field(default_factory=dict)
    structs: dict[str, list[tuple[str, str]]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


def strip_julia(text: str) -> str:
    """Blanks comments and string/char literals (keeping newlines and lengths), so that
    'ccall(' inside docstrings or comments is not parsed."""
    out = []
    i, n = 0, len(text)
    depth = 0  # nested #= =# comments
    while i < n:
        c = text[i]
        if depth:
            if text.startswith("=#", i):
                depth -= 1
                out.append("  ")
                i += 2
            elif text.startswith("#=", i):
                depth += 1
                out.append("  ")
                i += 2
            else:
                out.append("\n" if c == "\n" else " ")
                i += 1
            continue
        if text.startswith("#=", i):
            depth = 1
            out.append("  ")
            i += 2
        elif c == "#":
            j = text.find("\n", i)
            j = n if j < 0 else j
            out.append(" " * (j - i))
            i = j
        elif text.startswith('"""', i):
            j = text.find('"""', i + 3)
            j = n if j < 0 else j + 3
            out.append('"' + "".join("\n" if ch == "\n" else " " for ch in text[i + 1 : j - 1]) + '"')
            i = j
        elif c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            j = min(j + 1, n)
            out.append('"' + "".join("\n" if ch == "\n" else " " for ch in text[i + 1 : j - 1]) + '"')
            i = j
        elif c == "'" and re.match(r"'(\\.|[^\\'\n])'", text[i : i + 4]) and (i == 0 or not (text[i - 1].isalnum() or text[i - 1] in "_)]}'")):
            m = re.match(r"'(\\.|[^\\'\n])'", text[i : i + 4])
            out.append(" " * len(m.group(0)))
            i += len(m.group(0))
        else:
            out.append(c)
            i += 1
    return "".join(out)


def matching(text: str, open_idx: int) -> int:
    """Index of the bracket closing the one at open_idx."""
    pairs = {"(": ")", "[": "]", "{": "}"}
    stack = [pairs[text[open_idx]]]
    i = open_idx + 1
    while i < len(text):
        c = text[i]
        if c in pairs:
            stack.append(pairs[c])
        elif c in ")]}":
            if not stack or c != stack[-1]:
                raise ValueError(f"unbalanced {c!r} at offset {i}")
            stack.pop()
            if not stack:
                return i
        i += 1
    raise ValueError(f"unclosed bracket at offset {open_idx}")


def split_top(s: str) -> list[str]:
    """Splits on commas outside brackets; drops a trailing empty item (a 1-tuple's comma)."""
    parts, depth, cur = [], 0, []
    for c in s:
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        if c == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(c)
    parts.append("".join(cur))
    parts = [" ".join(p.split()) for p in parts]
    if parts and parts[-1] == "":
        parts.pop()
    return parts


def parse_julia(text: str) -> Julia:
    j = Julia()
    src = strip_julia(text)
    line_of = lambda off: src.count("\n", 0, off) + 1  # noqa: E731
    for m in re.finditer(r"^\s*const\s+(\w+)\s*=\s*(.+?)\s*$", src, flags=re.M):
        name, value = m.group(1), m.group(2)
        j.consts[name] = value
        if re.match(r"^[A-Z]\w*(\{.*\})?$", value):
            j.aliases[name] = value
    lines = src.split("\n")
    i = 0
    while i < len(lines):
        m = re.match(r"^\s*(?:mutable\s+)?struct\s+(\w+)(?:\s*<:\s*\w+)?\s*(end\b)?", lines[i])
        if not m:
            i += 1
            continue
        name, fields = m.group(1), []
        if m.group(2):  # `struct X end`: opaque
            j.structs[name] = fields
            i += 1
            continue
        if name not in STRUCTS:  # other structs (e.g. with inner constructors) are not checked
            j.structs.setdefault(name, [("<not parsed>", "<not parsed>")])
            i += 1
            continue
        i += 1
        while i < len(lines) and not re.match(r"^\s*end\b", lines[i]):
            fm = re.match(r"^\s*(\w+)\s*::\s*(.+?)\s*$", lines[i])
            if fm:
                fields.append((fm.group(1), fm.group(2)))
            elif lines[i].strip():
                j.problems.append(f"line {i + 1}: struct {name}: cannot parse {lines[i].strip()!r}")
            i += 1
        j.structs[name] = fields
        i += 1
    for m in re.finditer(r"(?<![\w@.])ccall\s*\(", src):
        open_idx = m.end() - 1
        try:
            close_idx = matching(src, open_idx)
        except ValueError as e:
            j.problems.append(f"line {line_of(m.start())}: cannot parse ccall: {e}")
            continue
        inner = src[open_idx + 1 : close_idx]
        parts = split_top(inner)
        where = line_of(m.start())
        if len(parts) < 3:
            j.problems.append(f"line {where}: ccall with {len(parts)} arguments (need (name, lib), ret, (types...))")
            continue
        target = parts[0]
        nm = re.match(r"^\(\s*:(\w+)\s*,", target) or re.match(r'^\(\s*"(\w+)"\s*,', target)
        if not nm:
            j.problems.append(f"line {where}: ccall target {target!r} is not (:name, lib)")
            continue
        types_text = parts[2].strip()
        if not (types_text.startswith("(") and types_text.endswith(")")):
            j.problems.append(f"line {where}: ccall argument types {types_text!r} are not a tuple")
            continue
        argtypes = split_top(types_text[1:-1])
        j.ccalls.append(CCall(nm.group(1), parts[1], argtypes, len(parts) - 3, where, " ".join(inner.split())))
    return j


JL_SCALARS = {
    "Int32": "int32_t", "Cint": "int32_t",
    "UInt32": "uint32_t", "Cuint": "uint32_t",
    "Int64": "int64_t", "Clonglong": "int64_t",
    "UInt64": "uint64_t", "Culonglong": "uint64_t",
    "Csize_t": "size_t",
    "Float32": "float", "Cfloat": "float",
    "Float64": "double", "Cdouble": "double",
    "Cvoid": "void", "Nothing": "void",
    "Cchar": "char", "UInt8": "uint8_t", "Int8": "int8_t",
    "Cstring": "char*",
}
CHARLIKE = {"char", "uint8_t", "int8_t"}


def jl_canon(t: str, j: Julia, h: Header, depth: int = 0) -> str:
    t = "".join(t.split())
    if depth > 20:
        return f"<alias loop {t}>"
    if t in j.aliases:
        return jl_canon(j.aliases[t], j, h, depth + 1)
    if t in JL_SCALARS:
        return JL_SCALARS[t]
    m = re.match(r"^(Ptr|Ref)\{(.+)\}$", t)
    if m:
        return jl_canon(m.group(2), j, h, depth + 1) + "*"
    m = re.match(r"^NTuple\{(\w+),(.+)\}$", t)
    if m:
        n = m.group(1)
        if not n.isdigit():
            value = j.consts.get(n, n)
            n = str(int(value)) if re.match(r"^-?\d+$", value) else n
        return f"{jl_canon(m.group(2), j, h, depth + 1)}[{n}]"
    if t in j.structs:
        return t
    return f"<unknown Julia type {t}>"


def same_type(c: str, jl: str) -> bool:
    if c == jl:
        return True
    # char pointers: Cstring / Ptr{UInt8} / Ptr{Cchar} / Ptr{Int8} all pass a char*.
    if c.endswith("*") and jl.endswith("*") and c.count("*") == jl.count("*"):
        return c.rstrip("*") in CHARLIKE and jl.rstrip("*") in CHARLIKE
    return False


def jl_int(value: str) -> int | None:
    v = value.strip()
    m = re.match(r"^(?:Int32|Int64|UInt32|Cint|Int)\(\s*(-?\d+)\s*\)$", v) or re.match(r"^(-?\d+)$", v)
    return int(m.group(1)) if m else None


# ---------------------------------------------------------------------------------------
# The checks


@dataclass
class Report:
    passed: int = 0
    failures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    verbose: bool = False

    def check(self, ok: bool, what: str, detail: str = "") -> None:
        if ok:
            self.passed += 1
            if self.verbose:
                print(f"ok    {what}")
        else:
            self.failures.append(f"FAIL  {what}" + (f": {detail}" if detail else ""))


def run_checks(header_text: str, julia_text: str, verbose: bool = False) -> Report:
    h = parse_header(header_text)
    j = parse_julia(julia_text)
    r = Report(verbose=verbose)
    r.check(len(h.funcs) > 0, "header: prototypes found", "no dashattn_* prototype parsed")
    if h.duplicates:
        r.notes.append(f"note: the header declares {len(set(h.duplicates))} function(s) more than once "
                       f"({', '.join(sorted(set(h.duplicates)))}); compared as one")
    for name in h.conflicts:
        r.check(False, f"header: {name}", "declared twice with different signatures")
    for p in j.problems:
        r.check(False, "julia: ccall syntax", p)

    # Every ccall against its prototype.
    for c in j.ccalls:
        where = f"ccall {c.name} (DashAttn.jl line {c.line})"
        f = h.funcs.get(c.name)
        if f is None:
            r.check(False, where, "no such function in the header")
            continue
        errs = []
        jr = jl_canon(c.ret, j, h)
        if not same_type(f.ret, jr):
            errs.append(f"return type {c.ret} ({jr}) but the header returns {f.ret}")
        if len(c.argtypes) != len(f.args):
            errs.append(f"{len(c.argtypes)} argument types but the header has {len(f.args)} arguments")
        else:
            for i, (jt, (ct, an)) in enumerate(zip(c.argtypes, f.args)):
                jc = jl_canon(jt, j, h)
                if not same_type(ct, jc):
                    errs.append(f"argument {i + 1} ({an}): {jt} ({jc}) but the header has {ct}")
        if c.nvalues != len(c.argtypes):
            errs.append(f"passes {c.nvalues} values for {len(c.argtypes)} declared types")
        r.check(not errs, where, "; ".join(errs))

    # Every header function has a ccall.
    called = {c.name for c in j.ccalls}
    for name in sorted(h.funcs):
        r.check(name in called, f"header function {name} has a ccall", "no ccall in DashAttn.jl")

    # Structs.
    for s in STRUCTS:
        cf = h.structs.get(s)
        if cf is None:
            r.check(False, f"struct {s}", "not found in the header")
            continue
        jf = j.structs.get(s)
        if jf is None:
            r.check(False, f"struct {s}", "not defined in DashAttn.jl")
            continue
        errs = []
        if len(cf) != len(jf):
            errs.append(f"{len(jf)} fields in Julia, {len(cf)} in C")
        for i, ((cn, ct), (jn, jt)) in enumerate(zip(cf, jf)):
            jc = jl_canon(jt, j, h)
            if cn != jn:
                errs.append(f"field {i + 1} is {jn!r} in Julia, {cn!r} in C")
            if not same_type(ct, jc):
                errs.append(f"field {cn}: {jt} ({jc}) in Julia, {ct} in C")
        r.check(not errs, f"struct {s} layout ({len(cf)} fields)", "; ".join(errs))
    for s in OPAQUE:
        r.check(s in h.opaque, f"header: opaque {s}", "not declared as an opaque struct")
        r.check(s in j.structs and not j.structs[s], f"julia: opaque {s}",
                "DashAttn.jl needs `mutable struct dashattn_context end`")

    # Integer constants.
    for name, value in sorted(h.defines.items()):
        jv = j.consts.get(name)
        got = jl_int(jv) if jv is not None else None
        r.check(got == value, f"constant {name} = {value}",
                "missing in DashAttn.jl" if jv is None else f"DashAttn.jl has {jv}")
    return r


# ---------------------------------------------------------------------------------------
# Self-test: the checker must notice deliberate mismatches.


def self_test(header_text: str, julia_text: str, verbose: bool = False) -> int:
    base = run_checks(header_text, julia_text)
    if base.failures:
        print("self-test: the unmodified binding already fails; fix that first")
        return 1
    mutations = [
        ("wrong return type", "UInt32, ())", "Int32, ())"),
        ("dropped argument type", "Ptr{Cvoid}, Csize_t),\n          ctx, config, q, k, v, pooled_k, head_alpha, o, lse, tau",
         "Csize_t),\n          ctx, config, q, k, v, pooled_k, head_alpha, o, lse, tau"),
        ("wrong argument type", "(Ptr{dashattn_context}, Ptr{Int32}), ctx, out_backend",
         "(Ptr{dashattn_context}, Ptr{Int64}), ctx, out_backend"),
        ("void* for a context", "(Ptr{dashattn_context},), ctx)", "(Ptr{Cvoid},), ctx)"),
        ("misspelled function", ":dashattn_cuda_available,", ":dashattn_cuda_availabel,"),
        ("missing ccall", "dashattn_version() =\n    ccall((:dashattn_version, libdashattn), UInt32, ())",
         "dashattn_version() = 0"),
        ("extra value", "(Ptr{dashattn_config},), config)", "(Ptr{dashattn_config},), config, 1)"),
        ("swapped struct fields", "    dtype::Int32\n    rank::Int32", "    rank::Int32\n    dtype::Int32"),
        ("wrong field type", "    alpha::Cfloat", "    alpha::Cdouble"),
        ("wrong array length", "NTuple{DASHATTN_MAX_RANK,Int64}\n    strides", "NTuple{5,Int64}\n    strides"),
        ("wrong constant", "const DASHATTN_ERR_OVERFLOW = Int32(7)", "const DASHATTN_ERR_OVERFLOW = Int32(8)"),
        ("ccall in a comment does not count", "dashattn_version() =\n    ccall((:dashattn_version, libdashattn), UInt32, ())",
         "# ccall((:dashattn_version, libdashattn), UInt32, ())\ndashattn_version() = 0"),
    ]
    bad = 0
    for what, old, new in mutations:
        if old not in julia_text:
            print(f"self-test: pattern for {what!r} not found in DashAttn.jl")
            bad += 1
            continue
        rep = run_checks(header_text, julia_text.replace(old, new, 1))
        if rep.failures:
            if verbose:
                print(f"self-test ok: {what} -> {rep.failures[0]}")
        else:
            print(f"self-test FAIL: {what}: not detected")
            bad += 1
    # The header side: a changed prototype must be noticed too.
    hmut = header_text.replace("uint32_t dashattn_version(void);", "uint32_t dashattn_version(int32_t x);")
    rep = run_checks(hmut, julia_text)
    if rep.failures and hmut != header_text:
        if verbose:
            print(f"self-test ok: header prototype changed -> {rep.failures[0]}")
    else:
        print("self-test FAIL: header prototype change not detected")
        bad += 1
    print(f"check_signatures self-test: {len(mutations) + 1} deliberate mismatches, "
          f"{len(mutations) + 1 - bad} passed (detected), {bad} failed")
    return 1 if bad else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--header", default=os.path.join(ROOT, "include", "dashattn.h"))
    ap.add_argument("--julia", default=os.path.join(HERE, "DashAttn.jl"))
    ap.add_argument("--self-test", action="store_true", help="check that deliberate mismatches are caught")
    ap.add_argument("-v", "--verbose", action="store_true", help="print passing checks too")
    args = ap.parse_args()
    with open(args.header, encoding="utf-8") as f:
        header_text = f.read()
    with open(args.julia, encoding="utf-8") as f:
        julia_text = f.read()
    if args.self_test:
        return self_test(header_text, julia_text, verbose=args.verbose)
    rep = run_checks(header_text, julia_text, verbose=args.verbose)
    for n in rep.notes:
        print(n)
    for line in rep.failures:
        print(line)
    print(f"check_signatures: {os.path.relpath(args.julia)} vs {os.path.relpath(args.header)}: "
          f"{rep.passed} passed, {len(rep.failures)} failed")
    return 1 if rep.failures else 0


if __name__ == "__main__":
    sys.exit(main())
