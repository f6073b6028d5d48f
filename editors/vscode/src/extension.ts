// VS Code client for codeparrot-ls: starts the server over stdio for Python files and lets
// vscode-languageclient (>= 10) register its inline completion provider, so suggestions show
// as ghost text. Everything runs locally; the extension adds settings, a status bar item fed by
// the server's `$/codeparrot/status` notification, and commands to restart and toggle.
import * as vscode from "vscode";
import {
  DidChangeConfigurationNotification,
  ExecuteCommandRequest,
  LanguageClient,
  LanguageClientOptions,
  ServerOptions,
  State,
} from "vscode-languageclient/node";
import { inlineCompletionMiddleware, registerPartialAccept } from "./partialAccept";

const SECTION = "codeparrot";

// Settings that decide how the server process is started: changing one restarts it.
const LAUNCH_KEYS = ["serverPath", "model", "engine", "extraArgs"] as const;

// Settings forwarded to the server as camelCase keys of codeparrot_ls/settings.py
// (CompletionSettings); tests/test_vscode_extension.py keeps this list and package.json in step.
export const COMPLETION_KEYS = [
  "enabled",
  "maxNewTokens",
  "singleLine",
  "contextTokens",
  "numCandidates",
  "temperature",
  "fim",
  "timeBudgetMs",
  "workspaceContext",
] as const;

type StatusState = "starting" | "loading" | "ready" | "error" | "stopped" | "disabled";

/** The server's `$/codeparrot/status` payload (codeparrot_ls/status.py ModelStatus.as_params). */
interface StatusParams {
  state?: string; // loading | ready | error | none
  message?: string;
  model?: string;
  engine?: string;
  loadMs?: number;
}

let client: LanguageClient | undefined;
let statusItem: vscode.StatusBarItem;
let output: vscode.LogOutputChannel;
// Serialises start/stop so quick successive restarts never leave two servers running.
let lifecycle: Promise<void> = Promise.resolve();

export function activate(context: vscode.ExtensionContext): void {
  output = vscode.window.createOutputChannel("CodeParrot", { log: true });
  statusItem = vscode.window.createStatusBarItem(vscode.StatusBarAlignment.Right, 100);
  statusItem.command = "codeparrot.showOutput";
  statusItem.show();
  context.subscriptions.push(output, statusItem);

  context.subscriptions.push(
    vscode.commands.registerCommand("codeparrot.restartServer", () => restart()),
    vscode.commands.registerCommand("codeparrot.showOutput", () => output.show(true)),
    vscode.commands.registerCommand("codeparrot.showStats", () => showStats()),
    ...registerPartialAccept(() => client),
    vscode.commands.registerCommand("codeparrot.toggleEnabled", async () => {
      const config = vscode.workspace.getConfiguration(SECTION);
      await config.update("enabled", !config.get<boolean>("enabled", true), vscode.ConfigurationTarget.Global);
    }),
    vscode.workspace.onDidChangeConfiguration((event) => {
      if (!event.affectsConfiguration(SECTION)) {
        return;
      }
      if (LAUNCH_KEYS.some((key) => event.affectsConfiguration(`${SECTION}.${key}`))) {
        void restart();
      } else {
        void pushSettings();
      }
    }),
  );

  void restart();
}

export function deactivate(): Promise<void> {
  return enqueue(stopClient);
}

function enqueue(step: () => Promise<void>): Promise<void> {
  lifecycle = lifecycle.then(step, step);
  return lifecycle;
}

function restart(): Promise<void> {
  return enqueue(async () => {
    await stopClient();
    await startClient();
  });
}

/** The completion settings in the shape the server reads (camelCase keys). */
function completionSettings(): Record<string, unknown> {
  const config = vscode.workspace.getConfiguration(SECTION);
  const settings: Record<string, unknown> = {};
  for (const key of COMPLETION_KEYS) {
    settings[key] = config.get(key);
  }
  return settings;
}

function serverOptions(): ServerOptions {
  const config = vscode.workspace.getConfiguration(SECTION);
  const command = config.get<string>("serverPath", "codeparrot-ls").trim() || "codeparrot-ls";
  const args = ["--stdio", "--engine", config.get<string>("engine", "auto")];
  const model = config.get<string>("model", "").trim();
  if (model) {
    args.push("--model", expandHome(model));
  }
  args.push(...config.get<string[]>("extraArgs", []));
  // No `transport`: the client then talks over stdio without appending its own flag.
  return { command: expandHome(command), args };
}

function expandHome(path: string): string {
  const home = process.env["HOME"] ?? process.env["USERPROFILE"];
  return home && (path === "~" || path.startsWith("~/")) ? home + path.slice(1) : path;
}

async function startClient(): Promise<void> {
  const model = vscode.workspace.getConfiguration(SECTION).get<string>("model", "").trim();
  const clientOptions: LanguageClientOptions = {
    documentSelector: [
      { scheme: "file", language: "python" },
      { scheme: "untitled", language: "python" },
    ],
    outputChannel: output,
    middleware: inlineCompletionMiddleware,
    // Flat camelCase settings plus the model folder, read once by the server at initialize.
    initializationOptions: () => ({ ...completionSettings(), ...(model ? { model: expandHome(model) } : {}) }),
    initializationFailedHandler: (error) => {
      setStatus("error", `initialisation failed: ${String(error)}`);
      return false;
    },
  };
  const next = new LanguageClient("codeparrot", "CodeParrot", serverOptions(), clientOptions);
  next.onDidChangeState((event) => {
    if (event.newState === State.Stopped) {
      setStatus("stopped", "the server is not running");
    }
  });
  next.onNotification("$/codeparrot/status", (params: StatusParams) => onStatus(params));
  client = next;
  setStatus("starting", "starting codeparrot-ls");
  try {
    await next.start();
    if (!vscode.workspace.getConfiguration(SECTION).get<boolean>("enabled", true)) {
      setStatus("disabled", "suggestions are turned off (codeparrot.enabled)");
    }
  } catch (error) {
    const command = serverOptionsCommand();
    setStatus("error", `could not start ${command}: ${String(error)}`);
    // Not awaited: a restart queued meanwhile must not wait for the user to close the message.
    void vscode.window
      .showErrorMessage(
        `CodeParrot: could not start the language server (${command}). Check "codeparrot.serverPath" ` +
          `and "codeparrot.model"; the log has the server's own message.`,
        "Open Settings",
        "Show Log",
      )
      .then((choice) => {
        if (choice === "Open Settings") {
          void vscode.commands.executeCommand("workbench.action.openSettings", SECTION);
        } else if (choice === "Show Log") {
          output.show(true);
        }
      });
  }
}

function serverOptionsCommand(): string {
  return vscode.workspace.getConfiguration(SECTION).get<string>("serverPath", "codeparrot-ls");
}

async function stopClient(): Promise<void> {
  const current = client;
  client = undefined;
  if (!current) {
    return;
  }
  try {
    if (current.needsStop()) {
      await current.stop(5000);
    }
  } catch (error) {
    output.warn(`stopping the server: ${String(error)}`);
  }
}

async function pushSettings(): Promise<void> {
  const current = client;
  const enabled = vscode.workspace.getConfiguration(SECTION).get<boolean>("enabled", true);
  if (!current || !current.isRunning()) {
    return;
  }
  // Pushed in the same flat shape as initializationOptions, under the section name.
  await current.sendNotification(DidChangeConfigurationNotification.type, {
    settings: { [SECTION]: completionSettings() },
  });
  setStatus(enabled ? "ready" : "disabled", enabled ? "settings updated" : "suggestions are turned off (codeparrot.enabled)");
}

/** The server's local counts (suggestions shown, accepted, partly accepted...) in the log. */
async function showStats(): Promise<void> {
  const current = client;
  if (!current || !current.isRunning()) {
    void vscode.window.showWarningMessage("CodeParrot: the server is not running.");
    return;
  }
  const stats: unknown = await current.sendRequest(ExecuteCommandRequest.type, { command: "codeparrot.stats", arguments: [] });
  output.info(`stats: ${JSON.stringify(stats)}`);
  output.show(true);
}

function onStatus(params: StatusParams): void {
  const state = (params.state ?? "").toLowerCase();
  const loaded = params.loadMs !== undefined ? `loaded in ${Math.round(params.loadMs)} ms` : undefined;
  const detail = [params.message, params.model, loaded].filter((part) => part).join(" · ");
  if (state === "loading" || state === "ready" || state === "error") {
    const enabled = vscode.workspace.getConfiguration(SECTION).get<boolean>("enabled", true);
    setStatus(state === "ready" && !enabled ? "disabled" : state, detail || state);
    if (state === "error") {
      void vscode.window.showErrorMessage(`CodeParrot: ${detail || "the server reported an error"}`, "Show Log").then(
        (choice) => choice && output.show(true),
      );
    }
  } else if (state === "none") {
    setStatus("starting", detail || "no model loaded yet");
  } else {
    output.warn(`unknown $/codeparrot/status: ${JSON.stringify(params)}`);
  }
}

const ICONS: Record<StatusState, string> = {
  starting: "$(loading~spin)",
  loading: "$(loading~spin)",
  ready: "$(sparkle)",
  error: "$(error)",
  stopped: "$(debug-stop)",
  disabled: "$(circle-slash)",
};

function setStatus(state: StatusState, detail: string): void {
  statusItem.text = `${ICONS[state]} CodeParrot`;
  statusItem.tooltip = `CodeParrot: ${state} — ${detail}\nClick to show the server log.`;
  statusItem.backgroundColor =
    state === "error" ? new vscode.ThemeColor("statusBarItem.errorBackground") : undefined;
  output.info(`status: ${state}: ${detail}`);
}
