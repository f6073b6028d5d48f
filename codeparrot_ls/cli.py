"""`codeparrot-ls`: start the language server.

    codeparrot-ls --model DIR [--engine auto|onnx|torch] [--log-file F] [--log-level L] [--threads N]
                  [--stdio | --tcp [--host 127.0.0.1] [--port N] [--token-file F] [--allow-remote]]

The model folder may also come from CODEPARROT_LS_MODEL or from the editor's
`initializationOptions.model`; without any, the packaged default model is used
when this install ships one. A model folder given on the command line or in
the environment is checked and loaded before the server starts: a missing,
broken or inconsistent one is reported on stderr with exit code 2.

Over TCP each connection is a session of its own (`codeparrot_ls.transport`); a
client's `initialize` must carry the token from --token-file in
`initializationOptions.token`. A --host that is not a loopback address is
refused unless --allow-remote is given.

This module imports neither torch nor transformers: with an ONNX model the
server runs on a server-only install.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from codeparrot_ls import __version__
from codeparrot_ls.modelfiles import ENGINES
from codeparrot_ls.status import ENV_MODEL, ERROR, model_problem, startup_model
from codeparrot_ls.transport import is_loopback, serve_stdio

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="codeparrot-ls", description="Local Python code completion over LSP.")
    p.add_argument("--model", help=f"model folder (ONNX export or Hugging Face checkpoint); default: ${ENV_MODEL}, "
                                   "then initializationOptions.model, then the packaged default model")
    p.add_argument("--engine", choices=ENGINES, default="auto",
                   help="inference engine; auto = ONNX when the folder has an exported model, else torch")
    transport = p.add_mutually_exclusive_group()
    transport.add_argument("--stdio", action="store_true", help="talk LSP over stdin/stdout (the default)")
    transport.add_argument("--tcp", action="store_true",
                           help="listen on a TCP port: one client session at a time, each connection its own")
    p.add_argument("--host", default="127.0.0.1", help="TCP address to bind (default: loopback only)")
    p.add_argument("--port", type=int, default=2087, help="TCP port (default: 2087)")
    p.add_argument("--token-file", help="TCP: the shared secret clients send as initializationOptions.token "
                                        "(made, mode 0600, when missing; default: $XDG_RUNTIME_DIR/codeparrot-ls/token, "
                                        "else ~/.cache/codeparrot-ls/token)")
    p.add_argument("--allow-remote", action="store_true",
                   help="TCP: allow a --host that is not loopback (the token then crosses the network in clear text)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for the model (default: the engine's)")
    p.add_argument("--log-file", help="write the log here instead of stderr")
    p.add_argument("--log-level", default="INFO", type=str.upper, choices=LOG_LEVELS)
    p.add_argument("--version", action="version", version=f"codeparrot-ls {__version__}")
    return p


def setup_logging(log_file: str | None, level: str) -> None:
    handler = logging.FileHandler(log_file, encoding="utf-8") if log_file else logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # pygls logs every message body at INFO; keep that for --log-level DEBUG.
    logging.getLogger("pygls").setLevel(level if level == "DEBUG" else "WARNING")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.threads is not None and args.threads < 1:
        parser.error("--threads must be >= 1")
    if not 0 < args.port < 65536:
        parser.error("--port must be between 1 and 65535")
    if args.tcp and not args.allow_remote and not is_loopback(args.host):
        parser.error(f"--host {args.host} is not a loopback address: any machine that reaches it could connect; "
                     "add --allow-remote if that is what you want")

    # A request tokenizes a few kilobytes in short pieces: on the calling thread that is faster
    # than spreading them over the tokenizer's thread pool, which wakes on the cores ONNX
    # Runtime decodes on (~1.5 ms of a request's context building; docs/benchmarks.md).
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    model, source = startup_model(args.model)
    if model:
        problem = model_problem(model, args.engine)
        if problem:
            print(f"codeparrot-ls: bad model ({source}): {problem}", file=sys.stderr)
            return 2
    try:
        setup_logging(args.log_file, args.log_level)
    except OSError as exc:
        print(f"codeparrot-ls: cannot open the log file: {exc}", file=sys.stderr)
        return 2
    log = logging.getLogger("codeparrot_ls")
    if not model:
        log.info("no model on the command line or in $%s: waiting for initializationOptions.model", ENV_MODEL)

    holder = None
    if model:
        # Load while the LSP machinery is still importing: the model is ready sooner after `initialize`.
        from codeparrot_ls.status import ModelHolder

        holder = ModelHolder()
        holder.start(model, args.engine, args.threads)

    from codeparrot_ls.server import SERVER

    if holder is not None:
        # A model named at start must work: one that cannot load is refused here, as a
        # missing one is, rather than reported to an editor that may never show it.
        holder.wait()
        if holder.status.state == ERROR:
            print(f"codeparrot-ls: bad model ({source}): {holder.status.message}", file=sys.stderr)
            return 2
    if args.tcp:
        return serve_tcp(args, log, model, source, holder)
    SERVER.configure(model, source, args.engine, args.threads, holder)
    # The protocol owns the real stdout; anything else printed by accident goes to stderr.
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr
    return serve_stdio(SERVER, stdin, stdout)


def serve_tcp(args: argparse.Namespace, log: logging.Logger, model: str | None, source: str, holder) -> int:
    from codeparrot_ls.server import new_server
    from codeparrot_ls.transport import TcpServer, default_token_file, ensure_token

    token_file = Path(args.token_file) if args.token_file else default_token_file()
    try:
        token = ensure_token(token_file)
    except OSError as exc:
        print(f"codeparrot-ls: cannot write the token file {token_file}: {exc}", file=sys.stderr)
        return 2
    if not is_loopback(args.host):
        log.warning("listening on %s, which is not loopback: other machines can connect, and the token "
                    "crosses the network in clear text", args.host)
    log.info("clients send the token in %s as initializationOptions.token", token_file)
    preloaded = [holder] if holder is not None else []

    def start_session(server) -> None:
        # The model loaded at startup goes to the first session; later ones load their own.
        server.configure(model, source, args.engine, args.threads, preloaded.pop() if preloaded else None)

    try:
        TcpServer(new_server, start_session, token).serve(args.host, args.port)
    except OSError as exc:
        print(f"codeparrot-ls: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    return 0

if __name__ == "__main__":
    sys.exit(main())
