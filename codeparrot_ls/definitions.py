"""What one Python module offers other modules, read with `ast`: the signatures of its
functions, class headers with their methods' signatures, constants, and its imports.

A definition is kept as a stub in real Python syntax (`def f(a, b=1) -> int: ...`), written
by `ast.unparse` from the module's own tree, so that it reads like the code the model was
trained on:

    class Config(dict):
        root_path = ...
        def __init__(self, root_path, defaults=None): ...
        def from_envvar(self, variable_name, silent=False) -> bool: ...

Import statements of a document that is being edited (and may not parse as a whole) are
found line by line and parsed one statement at a time (`import_bindings`).
"""

from __future__ import annotations

import ast
import copy
import re
import textwrap
from dataclasses import dataclass

MAX_CLASS_LINES = 40         # a class stub shows at most this many member lines
MAX_CONSTANT_CHARS = 100     # longer right-hand sides are written as `...`


@dataclass(frozen=True)
class Definition:
    name: str
    kind: str                # "function" | "class" | "constant"
    text: str                # the stub, starting at column 0, no trailing newline


@dataclass(frozen=True)
class Binding:
    """What a local name of a module refers to after its imports: a module (`attr` None)
    or a name defined in one."""
    module: str
    attr: str | None = None


@dataclass
class ModuleSummary:
    definitions: dict[str, Definition]
    bindings: dict[str, Binding]     # local name -> what its imports bind it to
    star_imports: list[str]          # modules of `from m import *`


# ----------------------------------------------------------------------------- module names

def resolve_relative(module: str | None, level: int, package: str | None) -> str | None:
    """The absolute module of `from <level dots><module> import ...` inside `package`."""
    if level == 0:
        return module
    if package is None:
        return None
    parts = package.split(".") if package else []
    if level - 1 > len(parts):
        return None
    base = parts[:len(parts) - (level - 1)]
    if module:
        base = [*base, module]
    return ".".join(base) if base else None


def package_of(module: str, is_package: bool) -> str:
    """The package relative imports of `module` start from."""
    return module if is_package else module.rpartition(".")[0]


def bindings_of(tree_body, package: str | None) -> tuple[dict[str, Binding], list[str]]:
    bindings: dict[str, Binding] = {}
    stars: list[str] = []
    for node in _with_guarded(tree_body):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.asname:
                    bindings[a.asname] = Binding(a.name)
                else:  # `import a.b` binds `a`
                    top = a.name.split(".")[0]
                    bindings[top] = Binding(top)
        elif isinstance(node, ast.ImportFrom):
            base = resolve_relative(node.module, node.level, package)
            if base is None:
                continue
            for a in node.names:
                if a.name == "*":
                    stars.append(base)
                else:
                    bindings[a.asname or a.name] = Binding(base, a.name)
    return bindings, stars


def _with_guarded(body):
    """The statements of a module's top level and of its `if` / `try` blocks there (imports
    under `if TYPE_CHECKING:` name the types its annotations use)."""
    for node in body:
        yield node
        if isinstance(node, ast.If):
            yield from _with_guarded([*node.body, *node.orelse])
        elif isinstance(node, ast.Try):
            yield from _with_guarded(node.body)


# ----------------------------------------------------------------------------- stubs

_ELLIPSIS = ast.Expr(ast.Constant(...))


def _header_source(lines: list[str], node) -> str | None:
    """A def/class header as written, decorators included, dedented, ending in its colon;
    None where this simple reading could be wrong (a `#` on the header's lines):
    `ast.unparse` writes those."""
    first = min([d.lineno for d in node.decorator_list], default=node.lineno) - 1
    body = node.body[0]
    if body.lineno > len(lines):
        return None
    chunk = lines[first:body.lineno - 1]
    head = lines[body.lineno - 1].encode("utf-8")[:body.col_offset].decode("utf-8", "replace")
    if head.strip():   # the body shares the header's last line: `def f(): return 1`
        chunk.append(head)
    while chunk and not chunk[-1].strip():
        chunk.pop()
    if not chunk or any("#" in ln for ln in chunk):
        return None
    text = textwrap.dedent("\n".join(chunk)).rstrip()
    return text if text.endswith(":") else None


def _function_stub(node, lines: list[str]) -> str:
    """`def name(args) -> ret: ...` with its decorators."""
    header = _header_source(lines, node)
    if header is not None:
        return header + " ..."
    stub = copy.copy(node)
    stub.body = [_ELLIPSIS]
    return ast.unparse(stub).replace(":\n    ...", ": ...")


def _constant(node, lines: list[str]) -> list[tuple[str, str]]:
    """(name, stub) for `NAME = value` / `NAME: T = value`; a long value becomes `...`."""
    targets = node.targets if isinstance(node, ast.Assign) else [node.target]
    names = [t.id for t in targets if isinstance(t, ast.Name)]
    if not names:
        return []
    if node.lineno == node.end_lineno and node.value is not None:
        row = lines[node.lineno - 1].strip()
        if len(row) <= MAX_CONSTANT_CHARS and "#" not in row and ";" not in row:
            return [(n, row) for n in names]
    value = node.value
    if value is None or len(ast.unparse(value)) > MAX_CONSTANT_CHARS:
        value = ast.Constant(...)
    out = []
    for n in names:
        if isinstance(node, ast.AnnAssign):
            stub = ast.AnnAssign(ast.Name(n, ast.Store()), node.annotation, value, 1, lineno=node.lineno)
        else:
            stub = ast.Assign([ast.Name(n, ast.Store())], value, lineno=node.lineno)
        out.append((n, ast.unparse(stub)))
    return out


def _class_stub(node: ast.ClassDef, lines: list[str]) -> str:
    header = _header_source(lines, node)
    if header is None:
        bare = copy.copy(node)
        bare.body = [_ELLIPSIS]
        header = ast.unparse(bare).rsplit("\n", 1)[0]
    members: list[str] = []
    for item in node.body:
        if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
            members.extend(_function_stub(item, lines).split("\n"))
        elif isinstance(item, (ast.Assign, ast.AnnAssign)):
            members.extend(stub for _, stub in _constant(item, lines))
        if len(members) >= MAX_CLASS_LINES:
            break
    body = members[:MAX_CLASS_LINES] or ["..."]
    return header + "\n" + "\n".join("    " + ln for ln in body)


def one_line(stub: str) -> str:
    """A stub on one line, decorators dropped: `def f(a, b=1) -> int: ...`, `class C(B): ...`."""
    lines = [ln for ln in stub.split("\n") if not ln.startswith("@")] or [stub]
    if lines[0].startswith("class "):
        return lines[0] if lines[0].endswith("...") else lines[0] + " ..."
    if len(lines) == 1:
        return lines[0]
    if not lines[0].startswith(("def ", "async def ")):
        return lines[0] if lines[0].endswith("...") else lines[0] + " ..."
    one = " ".join(ln.strip() for ln in lines)
    return re.sub(r"\(\s+", "(", re.sub(r",?\s+\)", ")", one))


def class_members(stub: str) -> dict[str, str]:
    """Name -> one-line stub of each member of a class stub (`summarize`'s), its decorators
    on lines of their own (`@property` tells an attribute from a method)."""
    try:
        node = ast.parse(stub).body[0]
    except (SyntaxError, ValueError, IndexError):
        return {}
    out: dict[str, str] = {}
    for item in getattr(node, "body", ()):
        segment = ast.get_source_segment(stub, item) or ""
        if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
            decorators = "".join(f"@{ast.unparse(d)}\n" for d in item.decorator_list)
            out[item.name] = decorators + one_line(segment)
        elif isinstance(item, (ast.Assign, ast.AnnAssign)):
            for t in (item.targets if isinstance(item, ast.Assign) else [item.target]):
                if isinstance(t, ast.Name):
                    out[t.id] = segment
    return out


def annotation_of(definition: Definition) -> str | None:
    """The dotted type a constant is annotated with (`current_app: Flask = ...` -> "Flask")."""
    m = _ANNOTATED.match(definition.text) if definition.kind == "constant" else None
    return m.group(1) if m else None


_ANNOTATED = re.compile(r"\w+\s*:\s*[\"']?([A-Za-z_][\w.]*)[\"']?\s*(?:=|$)")


def summarize(source: str, module: str, is_package: bool = False) -> ModuleSummary:
    """The definitions and import bindings of a module's top level. SyntaxError (and
    ValueError for NUL bytes) propagate: the caller counts the file as unparsable."""
    tree = ast.parse(source)
    lines = source.split("\n")
    defs: dict[str, Definition] = {}
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            defs[node.name] = Definition(node.name, "function", _function_stub(node, lines))
        elif isinstance(node, ast.ClassDef):
            defs[node.name] = Definition(node.name, "class", _class_stub(node, lines))
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            for name, stub in _constant(node, lines):
                if not name.startswith("__"):
                    defs[name] = Definition(name, "constant", stub)
    bindings, stars = bindings_of(tree.body, package_of(module, is_package))
    return ModuleSummary(defs, bindings, stars)


# ----------------------------------------------------------------------------- a document's imports

_IMPORT_START = re.compile(r"^[ \t]*(?:from[ \t]+\.*[\w.]*[ \t]+import\b|import[ \t]+[\w.])", re.M)
MAX_IMPORT_CHARS = 2000


def import_statements(text: str) -> list[tuple[int, str]]:
    """(line number, statement) of every import statement in `text`, found line by line
    (the document may not parse while it is being edited); multi-line statements in
    parentheses or with backslashes are joined."""
    out = []
    line, counted_to = 0, 0
    for m in _IMPORT_START.finditer(text):
        start = m.start()
        line += text.count("\n", counted_to, start)
        counted_to = start
        end = text.find("\n", start)
        end = len(text) if end < 0 else end
        stmt = text[start:end]
        if "(" in stmt and ")" not in stmt:
            close = text.find(")", end)
            if 0 <= close - start <= MAX_IMPORT_CHARS:
                end = close + 1
                stmt = text[start:end]
        while stmt.endswith("\\") and end < len(text) and len(stmt) < MAX_IMPORT_CHARS:
            nxt = text.find("\n", end + 1)
            end = len(text) if nxt < 0 else nxt
            stmt = text[start:end]
        out.append((line, stmt))
    return out


def import_bindings(text: str, package: str | None, cache: dict | None = None) -> tuple[dict[str, Binding], dict[str, int]]:
    """The bindings a document's imports make, and the line of each name's import.

    Each statement is parsed alone (a cache maps (statement, package) -> its bindings); one
    that does not parse is skipped. Imports inside functions count too: they bind names used
    near them.
    """
    bindings: dict[str, Binding] = {}
    lines: dict[str, int] = {}
    for line, stmt in import_statements(text):
        key = (stmt, package)
        found = cache.get(key) if cache is not None else None
        if found is None:
            try:
                nodes = ast.parse(textwrap.dedent(stmt).strip()).body
            except (SyntaxError, ValueError):
                nodes = []
            found = bindings_of(nodes, package)[0]
            if cache is not None:
                if len(cache) > 4096:
                    cache.clear()
                cache[key] = found
        for name, b in found.items():
            bindings[name] = b
            lines[name] = line
    return bindings, lines
