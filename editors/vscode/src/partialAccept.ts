// Accepting part of a suggestion (its next word or line) and telling the server, which counts it
// in `codeparrot.stats`: the Copilot-compatible `textDocument/didPartiallyAcceptCompletion`.
// VS Code's stable API has no hook for partial accepts nor for a suggestion being shown
// (InlineCompletionItemProvider's handleDidPartiallyAcceptCompletionItem / handleDidShowCompletionItem
// are proposed API, closed to published extensions), so the keybindings run these commands: each
// runs VS Code's own accept command, then measures how far the text before the cursor reaches
// into the suggestion last received for that document.
import * as vscode from "vscode";
import type { LanguageClient, Middleware } from "vscode-languageclient/node";

export const DID_PARTIALLY_ACCEPT = "textDocument/didPartiallyAcceptCompletion";

const PARTIAL_ACCEPTS = {
  "codeparrot.acceptNextWord": "editor.action.inlineSuggest.acceptNextWord",
  "codeparrot.acceptNextLine": "editor.action.inlineSuggest.acceptNextLine",
} as const;

/** The suggestions of the last non-empty answer, and where they were asked for. */
interface Received {
  uri: string;
  position: vscode.Position;
  items: readonly vscode.InlineCompletionItem[];
}

let last: Received | undefined;

/** Remembers each answer of the server on its way to VS Code (the answer is not changed). */
export const inlineCompletionMiddleware: Middleware = {
  provideInlineCompletionItems: async (document, position, context, token, next) => {
    const result = await next(document, position, context, token);
    const items = !result ? [] : Array.isArray(result) ? result : result.items;
    if (items.length > 0) {
      last = { uri: document.uri.toString(), position, items };
    }
    return result;
  },
};

interface Accepted {
  item: vscode.InlineCompletionItem;
  text: string;
  length: number; // UTF-16 code units of `text` now in the document, as LSP counts them
}

/** The received suggestion whose start the document now holds from its start to the cursor. */
function acceptedPart(received: Received | undefined, document: vscode.TextDocument, cursor: vscode.Position): Accepted | undefined {
  if (!received || received.uri !== document.uri.toString()) {
    return undefined;
  }
  for (const item of received.items) {
    const text = typeof item.insertText === "string" ? item.insertText : item.insertText.value;
    const start = item.range?.start ?? received.position;
    if (!cursor.isAfter(start)) {
      continue;
    }
    const inserted = document.getText(new vscode.Range(start, cursor));
    if (text.startsWith(inserted)) {
      return { item, text, length: inserted.length };
    }
  }
  return undefined;
}

export function registerPartialAccept(current: () => LanguageClient | undefined): vscode.Disposable[] {
  return Object.entries(PARTIAL_ACCEPTS).map(([id, builtin]) =>
    vscode.commands.registerCommand(id, async () => {
      const received = last; // before the accept: the edit may already bring a new answer
      await vscode.commands.executeCommand(builtin);
      const editor = vscode.window.activeTextEditor;
      const client = current();
      const part = editor && acceptedPart(received, editor.document, editor.selection.active);
      if (!part || !client || !client.isRunning()) {
        return;
      }
      const { item } = part;
      const range = item.range && client.code2ProtocolConverter.asRange(item.range);
      const command = item.command && { title: item.command.title, command: item.command.command, arguments: item.command.arguments };
      await client.sendNotification(DID_PARTIALLY_ACCEPT, {
        item: { insertText: part.text, ...(range ? { range } : {}), ...(command ? { command } : {}) },
        acceptedLength: part.length,
      });
    }),
  );
}
