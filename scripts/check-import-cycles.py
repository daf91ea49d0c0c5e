#!/usr/bin/env python3
"""Fail when the crate's modules import each other around a circle.

Reads src/ (main.rs and lib.rs excluded: the binary and the crate root only wire modules
together), maps each file to its top-level module (src/foo.rs and src/foo/** are `foo`) and
collects every path that names another top-level module: `crate::foo`, `use crate::{foo, ..}`
and `super::` paths that climb to the crate root. Comments, string literals, `#[cfg(test)]`
items (`mod tests { .. }`) and test-only files (declared `#[cfg(test)] mod x;`) are left out:
tests may reach anywhere.

    scripts/check-import-cycles.py          top-level modules
    scripts/check-import-cycles.py --files  module files (relative paths such as `super::x`
                                            and child modules count too; a parent's
                                            `pub use child::X` is its facade, not an import)

With a cycle: prints each strongly connected component of more than one node with one
example (file:line) per edge inside it, and exits 1. Without: prints a topological order,
modules that import nothing of the crate first, and exits 0.

Python 3 standard library only.
"""

import argparse
import os
import re
import sys

IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
CFG_TEST = re.compile(r"#\s*\[\s*cfg\s*\(\s*test\s*\)\s*\]")
INNER_CFG_TEST = re.compile(r"#!\s*\[\s*cfg\s*\(\s*test\s*\)\s*\]")
MOD_DECL = re.compile(r"\bmod\s+([A-Za-z_][A-Za-z0-9_]*)\s*([;{])")
PUB_USE = re.compile(r"\bpub(\s*\([^)]*\))?\s+use\b[^;]*;")
VIS_IN = re.compile(r"\bpub\s*\(\s*in\s+[^)]*\)")
PATH_START = re.compile(r"(?<![A-Za-z0-9_:])\$?(crate|super|self|[A-Za-z_][A-Za-z0-9_]*)\s*::")


def blank(text, start, end):
    """`text[start:end]` as spaces, newlines kept, so offsets and line numbers stay put."""
    return re.sub(r"[^\n]", " ", text[start:end])


def strip_comments_and_strings(src):
    """Source with comments and the contents of string and char literals blanked."""
    out = []
    i, n = 0, len(src)
    while i < n:
        c = src[i]
        nxt = src[i + 1] if i + 1 < n else ""
        if c == "/" and nxt == "/":
            j = src.find("\n", i)
            j = n if j < 0 else j
            out.append(blank(src, i, j))
            i = j
        elif c == "/" and nxt == "*":
            depth, j = 1, i + 2
            while j < n and depth:
                if src.startswith("/*", j):
                    depth, j = depth + 1, j + 2
                elif src.startswith("*/", j):
                    depth, j = depth - 1, j + 2
                else:
                    j += 1
            out.append(blank(src, i, j))
            i = j
        elif c in "rb" and (i == 0 or not (src[i - 1].isalnum() or src[i - 1] == "_")):
            m = re.compile(r"b?r(#*)\"|b\"|b'").match(src, i)
            if not m:
                out.append(c)
                i += 1
                continue
            if m.group(0).startswith("b'"):
                j = skip_quoted(src, m.end(), "'")
            elif m.group(0) == 'b"':
                j = skip_quoted(src, m.end(), '"')
            else:
                close = '"' + m.group(1)
                j = src.find(close, m.end())
                j = n if j < 0 else j + len(close)
            out.append(src[i : m.end()] + blank(src, m.end(), j))
            i = j
        elif c == '"':
            j = skip_quoted(src, i + 1, '"')
            out.append('"' + blank(src, i + 1, j))
            i = j
        elif c == "'":
            # A char literal ('x', '\n', '\u{1F600}') or a lifetime ('a): only the first
            # has a closing quote right after one character or an escape.
            if nxt == "\\":
                j = skip_quoted(src, i + 1, "'")
            elif i + 2 < n and src[i + 2] == "'":
                j = i + 3
            else:
                out.append(c)
                i += 1
                continue
            out.append("'" + blank(src, i + 1, j))
            i = j
        else:
            out.append(c)
            i += 1
    return "".join(out)


def skip_quoted(src, i, quote):
    """The offset just past the closing `quote`, escapes honoured."""
    n = len(src)
    while i < n:
        if src[i] == "\\":
            i += 2
        elif src[i] == quote:
            return i + 1
        else:
            i += 1
    return n


def matching(src, i, open_ch, close_ch):
    """The offset just past the bracket that closes the one at `i`."""
    depth = 0
    for j in range(i, len(src)):
        if src[j] == open_ch:
            depth += 1
        elif src[j] == close_ch:
            depth -= 1
            if depth == 0:
                return j + 1
    return len(src)


def skip_attributes(src, i):
    """The offset of the first non-attribute, non-space character from `i`."""
    while True:
        while i < len(src) and src[i].isspace():
            i += 1
        if src.startswith("#[", i) or (src.startswith("#", i) and src[i + 1 :].lstrip().startswith("[")):
            i = matching(src, src.index("[", i), "[", "]")
        else:
            return i


def item_end(src, i):
    """The end of the item starting at `i`: its `;`, or its closing brace."""
    j = i
    while j < len(src):
        if src[j] in "([":
            j = matching(src, j, src[j], ")" if src[j] == "(" else "]")
        elif src[j] == ";":
            return j + 1
        elif src[j] == "{":
            return matching(src, j, "{", "}")
        else:
            j += 1
    return len(src)


def test_only_children(code):
    """Names of the child modules this file declares under `#[cfg(test)]`."""
    names = set()
    for m in CFG_TEST.finditer(code):
        start = skip_attributes(code, m.end())
        decl = re.compile(r"(pub(\s*\([^)]*\))?\s+)?mod\s+([A-Za-z_][A-Za-z0-9_]*)\s*;").match(code, start)
        if decl:
            names.add(decl.group(3))
    return names


def strip_test_items(code):
    """`code` with every `#[cfg(test)]` item blanked (from its attribute to its end)."""
    while True:
        m = CFG_TEST.search(code)
        if not m:
            return code
        end = item_end(code, skip_attributes(code, m.end()))
        code = code[: m.start()] + blank(code, m.start(), end) + code[end:]


def parse_path_tree(code, i):
    """Paths of the use tree or path expression starting at `i` (just after a `::`), as
    lists of segments: `a::{b, c::d}` gives [a, b] and [a, c, d]. Stops at a glob, a
    turbofish or anything that is not a path."""
    ws = re.compile(r"\s*")
    i = ws.match(code, i).end()
    if i < len(code) and code[i] == "{":
        paths = []
        end = matching(code, i, "{", "}")
        inner, depth, part_start = code[i + 1 : end - 1], 0, 0
        parts = []
        for k, ch in enumerate(inner):
            if ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
            elif ch == "," and depth == 0:
                parts.append((part_start, k))
                part_start = k + 1
        parts.append((part_start, len(inner)))
        for a, b in parts:
            if inner[a:b].strip():
                paths.extend(parse_path_tree(code, i + 1 + a) if inner[a:b].strip() != "self" else [[]])
        return paths
    m = IDENT.match(code, i)
    if not m:
        return [[]]
    seg = m.group(0)
    j = ws.match(code, m.end()).end()
    if code.startswith("::", j) and not code.startswith("::<", j):
        return [[seg] + rest for rest in parse_path_tree(code, j + 2)]
    return [[seg]]


class Crate:
    def __init__(self, src_dir):
        self.src_dir = src_dir
        self.files = {}  # module path (tuple) -> relative file name
        self.code = {}  # relative file name -> source, comments/strings/tests blanked
        self.children = {}  # module path -> names of child modules (file or inline)
        self.test_only = set()  # module paths of test-only file modules
        self._read()

    def _read(self):
        raw = {}
        for root, _dirs, names in os.walk(self.src_dir):
            for name in names:
                if not name.endswith(".rs"):
                    continue
                full = os.path.join(root, name)
                rel = os.path.relpath(full, self.src_dir).replace(os.sep, "/")
                if rel in ("main.rs", "lib.rs"):
                    continue
                parts = rel[:-3].split("/")
                if parts[-1] == "mod":
                    parts = parts[:-1]
                with open(full, encoding="utf-8") as f:
                    raw[tuple(parts)] = (rel, strip_comments_and_strings(f.read()))
        with open(os.path.join(self.src_dir, "lib.rs"), encoding="utf-8") as f:
            lib = strip_comments_and_strings(f.read())
        declared = {(): lib}
        declared.update({path: code for path, (_rel, code) in raw.items()})
        for path, code in declared.items():
            self.children[path] = {m.group(1) for m in MOD_DECL.finditer(code)}
            for name in test_only_children(code):
                self.test_only.add(path + (name,))
        for path, (rel, code) in sorted(raw.items()):
            if INNER_CFG_TEST.search(code) or any(path[:k] in self.test_only for k in range(1, len(path) + 1)):
                continue
            self.files[path] = rel
            self.code[rel] = VIS_IN.sub(lambda m: blank(m.string, m.start(), m.end()), strip_test_items(code))

    def inline_modules(self, code):
        """(start, end, name) of each inline `mod name { .. }` block."""
        spans = []
        for m in MOD_DECL.finditer(code):
            if m.group(2) == "{":
                spans.append((m.start(), matching(code, m.end() - 1, "{", "}"), m.group(1)))
        return spans

    def references(self, path, files_mode):
        """(absolute module path, line) for each path in the file that leaves it."""
        rel = self.files[path]
        code = self.code[rel]
        spans = self.inline_modules(code)
        facades = [(m.start(), m.end()) for m in PUB_USE.finditer(code)] if files_mode else []
        for m in PATH_START.finditer(code):
            first = m.group(1)
            inline = tuple(name for a, b, name in spans if a < m.start() < b)
            here = path + inline
            if first == "crate":
                base = ()
            elif first == "super":
                base, k = here, m.end()
                base = base[:-1]
                while True:
                    nxt = re.compile(r"\s*super\s*::").match(code, k)
                    if not nxt:
                        break
                    base, k = base[:-1], nxt.end()
                m_end = k
            elif first == "self":
                base = here
            elif files_mode and first in self.children.get(here, ()):
                base = here + (first,)
            else:
                continue
            start = m_end if first == "super" else m.end()
            line = code.count("\n", 0, m.start()) + 1
            facade = any(a <= m.start() < b for a, b in facades)
            for tail in parse_path_tree(code, start):
                target = base + tuple(tail)
                if facade and len(target) > len(path) and target[: len(path)] == path:
                    continue
                yield target, line

    def file_of(self, abs_path):
        """The file module that an absolute path lands in: its longest file prefix."""
        for k in range(len(abs_path), 0, -1):
            if abs_path[:k] in self.files:
                return abs_path[:k]
        return None


def graph(crate, files_mode):
    """Nodes, and edges {(a, b): "file:line"} with the first example of each."""
    if files_mode:
        nodes = {crate.files[p] for p in crate.files}
    else:
        nodes = {p[0] for p in crate.files}
    edges = {}
    for path in sorted(crate.files):
        rel = crate.files[path]
        for target, line in crate.references(path, files_mode):
            if files_mode:
                hit = crate.file_of(target)
                a, b = rel, crate.files[hit] if hit else None
            else:
                a, b = path[0], target[0] if target and target[0] in nodes else None
            if b is None or a == b:
                continue
            edges.setdefault((a, b), f"src/{rel}:{line}")
    return sorted(nodes), edges


def strongly_connected(nodes, edges):
    """Tarjan's components, iteratively."""
    succ = {n: sorted(b for (a, b) in edges if a == n) for n in nodes}
    index, low, on_stack, stack, comps, counter = {}, {}, set(), [], [], [0]
    for root in nodes:
        if root in index:
            continue
        work = [(root, 0)]
        while work:
            v, i = work.pop()
            if i == 0:
                index[v] = low[v] = counter[0]
                counter[0] += 1
                stack.append(v)
                on_stack.add(v)
            recurse = False
            for k in range(i, len(succ[v])):
                w = succ[v][k]
                if w not in index:
                    work.append((v, k + 1))
                    work.append((w, 0))
                    recurse = True
                    break
                if w in on_stack:
                    low[v] = min(low[v], index[w])
            if recurse:
                continue
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                comps.append(sorted(comp))
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[v])
    return comps


def topological(nodes, edges):
    """Nodes with what they import first (Kahn's algorithm, ties by name)."""
    deps = {n: {b for (a, b) in edges if a == n} for n in nodes}
    order, done = [], set()
    while len(order) < len(nodes):
        ready = sorted(n for n in nodes if n not in done and deps[n] <= done)
        order.extend(ready)
        done.update(ready)
    return order, deps


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", action="store_true", help="cycles between module files")
    parser.add_argument(
        "--src",
        default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"),
        help="the crate's src/ directory (default: ../src from this script)",
    )
    args = parser.parse_args()
    crate = Crate(os.path.normpath(args.src))
    nodes, edges = graph(crate, args.files)
    what = "module files" if args.files else "top-level modules"
    cycles = [c for c in strongly_connected(nodes, edges) if len(c) > 1]
    if cycles:
        cycles.sort(key=lambda c: (-len(c), c))
        print(f"import cycles between {what}: {len(cycles)}")
        for comp in cycles:
            members = set(comp)
            inside = sorted((a, b) for (a, b) in edges if a in members and b in members)
            print(f"\n{len(comp)} {what} import each other: {', '.join(comp)}")
            width = max(len(f"{a} -> {b}") for a, b in inside)
            for a, b in inside:
                print(f"  {f'{a} -> {b}':<{width}}  {edges[(a, b)]}")
        return 1
    order, deps = topological(nodes, edges)
    print(f"no import cycle between {what}; each imports only those above it:")
    width = max(len(n) for n in order)
    for n in order:
        imports = ", ".join(sorted(deps[n])) or "-"
        print(f"  {n:<{width}}  imports {imports}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
