"""Suggestions for the two completion requests: the completer run on the scheduler for a
document position, and its results as inline completion items or completion list items,
each with the command that counts its acceptance.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING
from urllib.parse import unquote

from lsprotocol import types
from pygls.exceptions import JsonRpcInvalidParams

from codeparrot_ls.documents import tokenizable
from codeparrot_ls.positions import encoding_name, locate, to_document_newlines

if TYPE_CHECKING:
    from codeparrot_ls.session import CodeparrotServer

log = logging.getLogger(__name__)

ACCEPT_COMMAND = "codeparrot.acceptCompletion"
COMPLETION_LABEL = "codeparrot"         # shown beside each list item so it is never mistaken for another source


async def suggest(ls: CodeparrotServer, uri: str, position: types.Position, invoked: bool):
    """Suggestions at `position` as (insert text, range), the text in the document's line
    breaks and the range in the client's position encoding. A position past the document's
    last line gets none; a column past the end of its line is the end (LSP's rule)."""
    key = unquote(uri)
    doc = ls.workspace.text_documents.get(key)
    if doc is None:
        raise JsonRpcInvalidParams(f"unknown document {uri}: open it with textDocument/didOpen first")
    completer = ls.model.completer
    if not ls.settings.enabled or completer is None:
        return []
    cursor = locate(doc.source, position.line, position.character,
                    encoding_name(ls.workspace.position_encoding))
    if cursor is None:
        log.info("no line %d in %s: no suggestion", position.line, uri)
        return []
    text, offset, settings = tokenizable(cursor.text), cursor.offset, ls.settings
    others = ls.documents.others(key)
    repo = ls.repo.context_for(settings)

    def job(is_cancelled):
        return completer.complete(uri, text, offset, settings, invoked,
                                  other_documents=others, is_cancelled=is_cancelled, repo=repo)

    finished, suggestions = await ls.scheduler.run(key, job)
    if not finished or not suggestions:
        return []
    at = types.Position(cursor.line, cursor.character)
    return [(s, to_document_newlines(s.insert_text, cursor.newline), types.Range(at, at))
            for s in suggestions]


def inline_list(uri: str, results) -> types.InlineCompletionList:
    return types.InlineCompletionList(items=[
        types.InlineCompletionItem(insert_text=text, range=r, command=accept_command(uri, s))
        for s, text, r in results])


def completion_list(uri: str, results, capabilities: types.ClientCapabilities) -> types.CompletionList:
    items = []
    for rank, (s, text, r) in enumerate(results):
        # The edit inserts at the cursor; filterText is the same text (clients filter on it).
        first = next((ln for ln in s.insert_text.splitlines() if ln.strip()), s.insert_text).strip()
        items.append(types.CompletionItem(
            label=first if len(first) <= 60 else first[:57] + "...",
            label_details=types.CompletionItemLabelDetails(description=COMPLETION_LABEL),
            kind=types.CompletionItemKind.Text,
            detail="codeparrot-ls (local model)",
            documentation=_code_block(capabilities, s.insert_text),
            sort_text=f"~{COMPLETION_LABEL}{rank:02d}",   # after every other source's items
            filter_text=text,
            insert_text_format=types.InsertTextFormat.PlainText,
            text_edit=types.TextEdit(range=r, new_text=text),
            command=accept_command(uri, s)))
    return types.CompletionList(is_incomplete=True, items=items)


def accept_command(uri: str, suggestion) -> types.Command:
    info = {"uri": uri, "chars": len(suggestion.insert_text), "lines": suggestion.insert_text.count("\n") + 1,
            "fromCache": suggestion.from_cache}
    return types.Command(title="Accept codeparrot suggestion", command=ACCEPT_COMMAND, arguments=[info])


def _code_block(capabilities: types.ClientCapabilities, code: str) -> types.MarkupContent | str:
    caps = capabilities.text_document
    item = caps and caps.completion and caps.completion.completion_item
    if item and item.documentation_format and types.MarkupKind.Markdown in item.documentation_format:
        return types.MarkupContent(types.MarkupKind.Markdown, f"```python\n{code}\n```")
    return code
