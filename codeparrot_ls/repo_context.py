"""What the workspace index gives one completion request.

1. Definitions: the current document's imports (read from its buffer, statement by
   statement) bind local names to workspace modules; every use of such a name in the lines
   around the cursor (`helper(...)`, `mod.func`, `pkg.mod.Class.method`) resolves, through
   submodules and re-exports (`from .app import Flask as Flask`, `import *`), to the
   definition it names. Nearest use first; names only imported come after all used ones.
2. Files: the workspace files those imports resolve to, for similarity-ranked windows
   (codeparrot_ls/snippets.py ranks them together with the other open documents).

The cursor's own line is never read, so typing on it never changes what is found (the
prompt's head stays the same and the engine's KV prefix reuse keeps working). The current
document's copy on disk is never used, and an open document's buffer replaces its copy on
disk (`open_text`).
"""

from __future__ import annotations

import io
import keyword
import os
import re
import textwrap
import threading
import tokenize
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from codeparrot_ls.definitions import Binding, Definition, annotation_of, class_members, import_bindings, one_line, package_of
from codeparrot_ls.positions import line_start
from codeparrot_ls.snippets import SnippetIndex
from codeparrot_ls.workspace import IndexedFile, WorkspaceIndex, module_names

SCAN_ABOVE = 120             # lines above the cursor searched for uses of imported names
SCAN_BELOW = 20
IMPORT_ONLY_DISTANCE = 1_000_000
MAX_DEFINITIONS = 24
MAX_FILES = 6
MAX_REEXPORT_DEPTH = 3
MAX_CATALOGUE = 16           # names of a module listed after `module.`
MAX_CLASS_CATALOGUE = 6     # members listed after `instance.` (most are long signatures)
_RECEIVER = re.compile(r"([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)\.\w*$")
_CHAIN = re.compile(r"(?<![\w.])[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*")


@dataclass
class FoundDefinition:
    path: str
    label: str              # path from its workspace folder: the `# label` line above it
    definition: Definition
    distance: int           # lines between the cursor and the nearest use


@dataclass
class RepoFindings:
    definitions: list[FoundDefinition]     # most relevant first
    documents: list[tuple[str, str]]       # (uri, text) of workspace files, most relevant first


def _code_chains(text: str):
    """(line, [name, attr, ...], [column of each]) of the dotted names in the code of `text`
    (Python's own tokenizer: strings and comments are not code), outside import statements."""
    chain, cols, line, in_import, after_dot = [], [], 0, False, False
    try:
        for tok in tokenize.generate_tokens(io.StringIO(text).readline):
            if tok.type == tokenize.NAME and (after_dot or not chain):
                if not chain:
                    line = tok.start[0] - 1
                    in_import = in_import or (tok.string in ("import", "from") and tok.line.lstrip().startswith(tok.string))
                chain.append(tok.string)
                cols.append(tok.start[1])
                after_dot = False
                continue
            if tok.type == tokenize.OP and tok.string == "." and chain and not after_dot:
                after_dot = True
                continue
            if chain and not in_import and not keyword.iskeyword(chain[0]):
                yield line, chain, cols
            chain, cols, after_dot = [], [], False
            if tok.type in (tokenize.NEWLINE, tokenize.ENDMARKER):
                in_import = False
            if tok.type == tokenize.NAME:
                line, chain, cols = tok.start[0] - 1, [tok.string], [tok.start[1]]
                in_import = in_import or (tok.string in ("import", "from") and tok.line.lstrip().startswith(tok.string))
    except (tokenize.TokenError, SyntaxError):
        return


def _receiver(head: str) -> tuple[str, ...] | None:
    """`("mod", "sub")` when the text before the cursor ends in `mod.sub.` or `mod.sub.na`."""
    m = _RECEIVER.search(head)
    return tuple(m.group(1).split(".")) if m else None


def _head_chains(head: str) -> tuple[tuple[str, ...], ...]:
    """The dotted names (`mod.Class`, `helper`) in code (not in strings or comments) on the
    cursor's line before the cursor, nearest first; the word being typed is left out."""
    head = re.sub(r"\w+$", "", head).lstrip() + "\n"
    return tuple(dict.fromkeys(tuple(chain) for _, chain, _ in reversed(list(_code_chains(head)))))


def _class_header(stub: str) -> str:
    """`class C(B):` of a class stub, decorators left out."""
    lines = [ln for ln in stub.split("\n") if not ln.startswith("@")]
    end = next((i for i, ln in enumerate(lines) if ln.rstrip().endswith(":")), 0)
    return "\n".join(lines[:end + 1])


def _line_bounds(text: str, line: int) -> tuple[int, int]:
    """(start, end) of `line` in "\n"-text; (len, len) past the last line."""
    start = line_start(text, line)
    if start is None:
        return len(text), len(text)
    end = text.find("\n", start)
    return start, len(text) if end < 0 else end


def path_to_uri(path: str) -> str:
    from pathlib import Path

    return Path(path).as_uri()


def uri_to_path(uri: str) -> str | None:
    from pygls.uris import to_fs_path

    return to_fs_path(uri) if uri.startswith("file:") else None


class RepoContext:
    """Reads the index for requests; keeps small caches (parsed import statements, the text
    of recently used files, their snippet windows)."""

    def __init__(self, index: WorkspaceIndex, open_text: Callable[[str], str | None] | None = None,
                 max_cached_files: int = 64):
        self.index = index
        self.open_text = open_text or (lambda path: None)
        self.windows = SnippetIndex(max_documents=max_cached_files)
        self._statements: dict = {}
        self._texts: OrderedDict[str, tuple[int, str]] = OrderedDict()
        self._max_texts = max_cached_files
        self._lock = threading.Lock()
        self._last: dict = {}          # uri -> (key, findings) of its last request
        self._labels: dict[str, str] = {}

    def gather(self, uri: str | None, text: str, line: int, cursor_head: str | None = None) -> RepoFindings:
        """What the index offers at `line` of the document `uri` whose buffer is `text`:
        nothing unless the cursor's line, before the cursor (`cursor_head`), uses a name the
        document imports from the workspace (`helper(`, `mod.`, `x: Config = `). Elsewhere
        the definitions cost more than they gave (docs/benchmarks.md), and the prompt is
        then exactly the one without workspace context. On the cursor's line only complete
        names count (not the one being typed), so the last answer per document serves the
        requests made while typing on."""
        bounds = _line_bounds(text, line)
        receiver = _receiver(cursor_head) if cursor_head else None
        chains = _head_chains(cursor_head) if cursor_head else ()
        key = (line, receiver, chains, self.index.version, hash(text[:bounds[0]]), hash(text[bounds[1]:]))
        with self._lock:
            hit = self._last.get(uri)
        if hit is not None and hit[0] == key:
            return hit[1]
        findings = self._gather(uri, text, line, receiver, chains)
        with self._lock:
            if len(self._last) > 64:
                self._last.clear()
            self._last[uri] = (key, findings)
        return findings

    def _gather(self, uri: str | None, text: str, line: int, receiver: tuple[str, ...] | None,
                chains: tuple[tuple[str, ...], ...]) -> RepoFindings:
        path = uri_to_path(uri) if uri else None
        path = os.path.abspath(path) if path else None
        bindings, import_lines = import_bindings(text, self._package(path), self._statements)
        at_cursor = [(0, list(c)) for c in chains if c[0] in bindings and self._module_file(bindings[c[0]]) is not None]
        if not at_cursor:
            return RepoFindings([], [])
        uses = at_cursor + self._uses(text, line, bindings, import_lines)
        found: dict[tuple[str, str], FoundDefinition] = {}
        files: dict[str, None] = {}
        if receiver and receiver[0] in bindings:
            self._receiver_definitions(text, bindings[receiver[0]], list(receiver), path, found, files)
        for distance, chain in uses:
            b = bindings[chain[0]]
            target = self._resolve(b.module, ([b.attr] if b.attr else []) + chain[1:])
            if target is None:
                continue
            entry, definition, after = target
            if entry.path == path:
                continue
            files.setdefault(entry.path)
            member = self._member(entry, definition, after[0], distance) if after else None
            for hit in ([member] if member else []) + [FoundDefinition(entry.path, self._label(entry.path), definition, distance)]:
                found.setdefault((hit.path, hit.definition.name), hit)
            if len(found) >= MAX_DEFINITIONS:
                break
        for name in sorted(bindings, key=lambda n: abs(import_lines[n] - line)):   # modules imported, used or not
            if len(files) >= MAX_FILES:
                break
            b = bindings[name]
            entry = self._module_file(b)
            if entry is not None and entry.path != path:
                files.setdefault(entry.path)
        documents = []
        for p in list(files)[:MAX_FILES]:
            t = self._text(p)
            if t is not None:
                documents.append((path_to_uri(p), t))
        return RepoFindings(list(found.values()), documents)

    def cross_module_lines(self, uri: str, text: str) -> dict[int, list[tuple[str, int]]]:
        """Lines of a document that use, in code (not in strings, comments or imports), a name
        defined in another module of the workspace, with those names and their columns (of
        the name itself in `mod.name`): where the evaluation puts its cross-file positions."""
        path = os.path.abspath(uri_to_path(uri) or "")
        bindings, _ = import_bindings(text, self._package(path), self._statements)
        out: dict[int, list[tuple[str, int]]] = {}
        for n, chain, cols in _code_chains(text) if bindings else ():
            b = bindings.get(chain[0])
            hit = b and self._resolve(b.module, ([b.attr] if b.attr else []) + chain[1:])
            if hit and hit[0].path != path:
                name = hit[1].name
                out.setdefault(n, []).append((name, cols[chain.index(name)] if name in chain else cols[0]))
        return out

    # -- helpers ------------------------------------------------------------------------
    def _receiver_definitions(self, text, b: Binding, receiver: list[str], path, found, files) -> None:
        """The cursor is after `receiver.`: a module gives a catalogue of its names (one line
        each: what may follow the dot), those the document already uses from it first; a
        class or other definition gives its stub."""
        module, rest = b.module, ([b.attr] if b.attr else []) + receiver[1:]
        while rest and self.index.has_module(f"{module}.{rest[0]}"):
            module, rest = f"{module}.{rest[0]}", rest[1:]
        if rest:
            target = self._resolve(module, rest)
            if target is not None and target[0].path != path:
                entry, definition, _ = target
                files.setdefault(entry.path)
                members = self._members(entry, definition, text, ".".join(receiver))
                for hit in [members] if members else [FoundDefinition(entry.path, self._label(entry.path), definition, -1)]:
                    found[(hit.path, hit.definition.name)] = hit
            return
        entry = self.index.module(module)
        if entry is None or entry.summary is None or entry.path == path:
            return
        files.setdefault(entry.path)
        used = set(re.findall(r"(?<![\w.])" + re.escape(".".join(receiver)) + r"\.(\w+)", text))
        names = sorted(entry.summary.definitions, key=lambda n: (n not in used, n.startswith("_")))
        for name in names[:MAX_CATALOGUE]:
            d = entry.summary.definitions[name]
            short = Definition(d.name, d.kind, one_line(d.text))
            found[(entry.path, name)] = FoundDefinition(entry.path, self._label(entry.path), short, -1)

    def _package(self, path: str | None) -> str | None:
        if path is None:
            return None
        entry = self.index.file(path)
        if entry is not None:
            names, is_package = entry.modules, entry.is_package
        else:
            names, is_package = module_names(path, self.index.root_of(path))
        return package_of(names[0], is_package) if names else ""

    @staticmethod
    def _uses(text: str, line: int, bindings: dict[str, Binding], import_lines: dict[str, int]):
        """(distance, name chain) of uses of imported names near the cursor, nearest first."""
        lines = text.split("\n")
        first = max(line - SCAN_ABOVE, 0)
        uses: dict[tuple[str, ...], int] = {}
        for n in range(first, min(line + SCAN_BELOW + 1, len(lines))):
            content = lines[n]
            if n == line or content.lstrip().startswith(("import ", "from ")):
                continue
            for m in _CHAIN.finditer(content):
                chain = tuple(m.group().split("."))
                if chain[0] in bindings:
                    d = abs(n - line)
                    if d < uses.get(chain, IMPORT_ONLY_DISTANCE * 2):
                        uses[chain] = d
        for name, at in import_lines.items():    # imported but not used nearby
            uses.setdefault((name,), IMPORT_ONLY_DISTANCE + abs(at - line))
        return sorted(((d, list(c)) for c, d in uses.items()), key=lambda x: (x[0], x[1]))

    def _class_of(self, entry: IndexedFile, definition: Definition) -> tuple[IndexedFile, Definition] | None:
        """The workspace class `definition` is, or that a constant is annotated with."""
        if definition.kind == "class":
            return entry, definition
        annotation = annotation_of(definition)
        hit = self._resolve(entry.modules[0], annotation.split(".")) if annotation and entry.modules else None
        return hit[:2] if hit and hit[1].kind == "class" and not hit[2] else None

    def _member(self, entry: IndexedFile, definition: Definition, name: str, distance: int) -> FoundDefinition | None:
        """`Class.name` (or `instance.name`) used: that member's signature under its class's header."""
        cls = self._class_of(entry, definition)
        stub = class_members(cls[1].text).get(name) if cls else None
        if stub is None:
            return None
        text = _class_header(cls[1].text) + "\n" + textwrap.indent(stub, "    ")
        return FoundDefinition(cls[0].path, self._label(cls[0].path), Definition(f"{cls[1].name}.{name}", "member", text), distance)

    def _members(self, entry: IndexedFile, definition: Definition, text: str, receiver: str) -> FoundDefinition | None:
        """The cursor is after `receiver.`, a workspace class or an instance of one: its
        members, one line each, those the document already uses on `receiver` first."""
        cls = self._class_of(entry, definition)
        members = class_members(cls[1].text) if cls else {}
        if not members:
            return None
        used = set(re.findall(r"(?<![\w.])" + re.escape(receiver) + r"\.(\w+)", text))
        names = sorted(members, key=lambda n: (n not in used, n.startswith("_")))[:MAX_CLASS_CATALOGUE]
        body = "\n".join(textwrap.indent(members[n], "    ") for n in names)
        return FoundDefinition(cls[0].path, self._label(cls[0].path),
                               Definition(cls[1].name, "class", _class_header(cls[1].text) + "\n" + body), -1)

    def _resolve(self, module: str, rest: list[str], depth: int = 0) -> tuple[IndexedFile, Definition, list[str]] | None:
        """The definition `module.rest[0]...` names, through submodules and re-exports, and
        the names after it (`Class.method` -> the class, ["method"])."""
        while rest and self.index.has_module(f"{module}.{rest[0]}"):
            module, rest = f"{module}.{rest[0]}", rest[1:]
        entry = self.index.module(module)
        if not rest or entry is None or entry.summary is None:
            return None
        summary = entry.summary
        definition = summary.definitions.get(rest[0])
        if definition is not None:
            return entry, definition, rest[1:]
        if depth >= MAX_REEXPORT_DEPTH:
            return None
        b = summary.bindings.get(rest[0])
        if b is not None and b.module != module:
            return self._resolve(b.module, ([b.attr] if b.attr else []) + rest[1:], depth + 1)
        for star in summary.star_imports:
            hit = self._resolve(star, rest, depth + 1)
            if hit is not None:
                return hit
        return None

    def _module_file(self, b: Binding) -> IndexedFile | None:
        if b.attr is not None:
            sub = self.index.module(f"{b.module}.{b.attr}")
            if sub is not None:
                return sub
        return self.index.module(b.module)

    def _label(self, path: str) -> str:
        label = self._labels.get(path)
        if label is None:
            if len(self._labels) > 100_000:
                self._labels.clear()
            label = self._labels[path] = self._make_label(path)
        return label

    def _make_label(self, path: str) -> str:
        root = self.index.root_of(path)
        rel = os.path.relpath(path, os.path.dirname(root.rstrip(os.sep))) if root else os.path.basename(path)
        return rel.replace(os.sep, "/")

    def _text(self, path: str) -> str | None:
        """A workspace file's text: its open buffer, else its copy on disk (cached while its
        indexed modification time holds)."""
        buffer = self.open_text(path)
        if buffer is not None:
            return buffer
        entry = self.index.file(path)
        if entry is None:
            return None
        with self._lock:
            hit = self._texts.get(path)
            if hit is not None and hit[0] == entry.mtime_ns:
                self._texts.move_to_end(path)
                return hit[1]
        try:
            with open(path, encoding="utf-8") as fh:
                text = fh.read(self.index.max_file_bytes + 1)
        except (OSError, UnicodeDecodeError):
            return None
        with self._lock:
            self._texts[path] = (entry.mtime_ns, text)
            while len(self._texts) > self._max_texts:
                self._texts.popitem(last=False)
        return text
