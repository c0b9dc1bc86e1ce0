#!/usr/bin/env python3
"""Checks the shape of the code, as a reader would: no import circle between the modules of
a crate, and no function over 100 lines outside tests.

The import graph has one node per module file (`lib.rs`, `a/mod.rs`, `a/b.rs`) of each library
crate (binaries are leaves and are left out). An edge M -> N means M's code names an item that
is *defined* in N: `crate::`, `super::` and `self::` paths are resolved to the longest module
prefix, and a name that module only re-exports (`pub use x::Y`) is followed to where it is
defined, as rust-analyzer-based tools (cargo-modules) do. A parent that declares `mod child` is
not an edge; using the child's items is. Any strongly connected component of more than one
module is an import circle.

Function lengths count from the line of `fn` to its closing brace; `#[cfg(test)]` modules and
the entries of EXEMPT are skipped.

Usage: check_layout.py [REPO_ROOT]; prints what it found and exits 1 on any finding.
"""
import os
import re
import sys

MAX_FN_LINES = 100
# name -> why it may be longer
EXEMPT = {
    ("crates/train/src/model/pickle.rs", "parse_at"): "the pickle opcode table: one arm per opcode",
}
CRATES = ["src", "crates/train/src", "crates/predict/src"]

ITEM_DEF = r"^\s*(?:pub(?:\([^)]*\))?\s+)?(?:unsafe\s+|async\s+|const\s+)*(?:struct|enum|fn|trait|type|const|static|mod|union|macro_rules!)\s+{name}\b"
PATH = re.compile(r"\b(crate|super|self)((?:::[A-Za-z_][A-Za-z0-9_]*)+)(::\{)?")


def strip_tests_and_comments(text):
    """The text without `#[cfg(test)]` items, line comments and string literals' contents."""
    out, skip_depth, depth, pending = [], None, 0, False
    for line in text.split("\n"):
        code = re.sub(r'"(?:\\.|[^"\\])*"', '""', line)
        code = re.sub(r"//.*", "", code)
        if skip_depth is None and re.match(r"\s*#\[cfg\(test\)\]", code):
            pending = True
            out.append("")
            continue
        if pending and skip_depth is None and code.strip():
            skip_depth = depth
            pending = False
        depth += code.count("{") - code.count("}")
        if skip_depth is not None:
            out.append("")
            if depth <= skip_depth and ("}" in code or ";" in code):
                skip_depth = None
            continue
        out.append(code)
    return "\n".join(out)


def modules(root, crate_dir):
    """module path (tuple) -> file, for one crate's src folder (bin/ left out)."""
    base = os.path.join(root, crate_dir)
    mods = {}
    for dirpath, dirs, files in os.walk(base):
        rel = os.path.relpath(dirpath, base)
        if rel.split(os.sep)[0] == "bin":
            continue
        parts = () if rel == "." else tuple(rel.split(os.sep))
        for f in files:
            if not f.endswith(".rs"):
                continue
            if f in ("lib.rs", "main.rs") and not parts:
                mods[()] = os.path.join(dirpath, f)
            elif f == "mod.rs":
                mods[parts] = os.path.join(dirpath, f)
            else:
                mods[parts + (f[:-3],)] = os.path.join(dirpath, f)
    return mods


def split_group(text):
    """Top-level comma-separated items of a `{…}` group body."""
    items, depth, cur = [], 0, ""
    for ch in text:
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
        if ch == "," and depth == 0:
            items.append(cur.strip())
            cur = ""
        else:
            cur += ch
    if cur.strip():
        items.append(cur.strip())
    return items


def group_body(code, start):
    depth, i = 1, start
    while i < len(code) and depth:
        depth += {"{": 1, "}": -1}.get(code[i], 0)
        i += 1
    return code[start:i - 1]


class Crate:
    def __init__(self, root, crate_dir):
        self.mods = modules(root, crate_dir)
        self.code = {m: strip_tests_and_comments(open(f, encoding="utf-8").read()) for m, f in self.mods.items()}

    def absolute(self, current, head, segs):
        if head == "crate":
            return list(segs)
        if head == "self":
            return list(current) + list(segs)
        base = list(current)
        rest = list(segs)
        base = base[:-1]
        while rest and rest[0] == "super":
            base, rest = base[:-1], rest[1:]
        return base + rest

    def defines(self, mod, name):
        return re.search(ITEM_DEF.format(name=re.escape(name)), self.code[mod], re.M) is not None

    def reexport_source(self, mod, name, seen):
        """Where `mod`'s `pub use …name` comes from, if it re-exports `name`."""
        code = self.code[mod]
        for m in re.finditer(r"pub(?:\([^)]*\))?\s+use\s+([^;]+);", code):
            spec = m.group(1).strip()
            for full in expand_use(spec):
                segs = full.split("::")
                alias = segs[-1]
                if " as " in alias:
                    orig, alias = [s.strip() for s in alias.split(" as ")]
                    segs = segs[:-1] + [orig]
                if alias != name:
                    continue
                head, rest = (segs[0], segs[1:]) if segs[0] in ("crate", "super", "self") else ("self", segs)
                return self.resolve(mod, head, rest, seen)
        return None

    def resolve(self, current, head, segs, seen=None):
        """The module where the item named by `head::segs` is defined (None: outside the crate)."""
        seen = set() if seen is None else seen
        path = self.absolute(current, head, segs)
        k = len(path)
        while k >= 0 and tuple(path[:k]) not in self.mods:
            k -= 1
        if k < 0:
            return None
        mod = tuple(path[:k])
        if k == len(path):
            return mod
        name = path[k]
        if self.defines(mod, name) or (mod, name) in seen:
            return mod
        seen.add((mod, name))
        src = self.reexport_source(mod, name, seen)
        return src if src is not None else mod

    def edges(self):
        out = {m: set() for m in self.mods}
        for m, code in self.code.items():
            for match in PATH.finditer(code):
                head, tail, brace = match.group(1), match.group(2), match.group(3)
                segs = tail.split("::")[1:]
                targets = []
                if brace:
                    for item in split_group(group_body(code, match.end())):
                        for full in expand_use(item):
                            first = [s.split(" as ")[0].strip() for s in full.split("::")]
                            if first and first[0] != "self":
                                targets.append(segs + first)
                            else:
                                targets.append(segs)
                else:
                    targets.append(segs)
                for t in targets:
                    r = self.resolve(m, head, t)
                    if r is not None and r != m:
                        out[m].add(r)
        return out


def expand_use(spec):
    """`a::{b, c::{d}}` -> ['a::b', 'a::c::d']."""
    spec = spec.strip()
    i = spec.find("{")
    if i < 0:
        return [spec] if spec and spec != "*" else []
    prefix = spec[:i].rstrip(":")
    body = spec[i + 1:spec.rfind("}")]
    res = []
    for item in split_group(body):
        for sub in expand_use(item):
            res.append(f"{prefix}::{sub}" if prefix else sub)
    return res


def cycles(graph):
    index, low, stack, on, comps, counter = {}, {}, [], set(), [], [0]

    def strong(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                comps.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in sorted(graph):
        if v not in index:
            strong(v)
    return comps


def long_functions(root):
    found = []
    for crate_dir in CRATES + ["crates/predict/examples", "crates/train/examples", "examples"]:
        base = os.path.join(root, crate_dir)
        for dirpath, _, files in os.walk(base):
            for f in files:
                if not f.endswith(".rs"):
                    continue
                path = os.path.join(dirpath, f)
                rel = os.path.relpath(path, root)
                lines = strip_tests_and_comments(open(path, encoding="utf-8").read()).split("\n")
                i = 0
                while i < len(lines):
                    m = re.match(r"\s*(?:pub(?:\([^)]*\))?\s+)?(?:const\s+|async\s+|unsafe\s+|extern\s+\"C\"\s+)*fn\s+([A-Za-z_0-9]+)", lines[i])
                    if not m:
                        i += 1
                        continue
                    depth, j, opened = 0, i, False
                    while j < len(lines):
                        depth += lines[j].count("{") - lines[j].count("}")
                        opened = opened or "{" in lines[j]
                        if opened and depth <= 0:
                            break
                        if not opened and lines[j].rstrip().endswith(";"):
                            break
                        j += 1
                    n = j - i + 1
                    if opened and n > MAX_FN_LINES and (rel, m.group(1)) not in EXEMPT:
                        found.append(f"{rel}:{i + 1}: fn {m.group(1)} is {n} lines (at most {MAX_FN_LINES})")
                    i += 1
    return found


def main():
    root = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..")
    problems = []
    for crate_dir in CRATES:
        crate = Crate(root, crate_dir)
        graph = crate.edges()
        n_edges = sum(len(v) for v in graph.values())
        comps = cycles(graph)
        name = lambda m: "::".join(("crate",) + m)
        for comp in comps:
            problems.append(f"{crate_dir}: import circle between " + ", ".join(name(m) for m in comp))
        print(f"{crate_dir}: {len(graph)} modules, {n_edges} import edges, {len(comps)} circles")
    longs = long_functions(root)
    problems += longs
    print(f"functions over {MAX_FN_LINES} lines outside tests: {len(longs)}")
    for p in problems:
        print("  " + p)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
