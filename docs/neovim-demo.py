"""Reproduce docs/neovim-demo.txt / .ansi / .png: a suggestion from codeparrot-ls in Neovim.

    python docs/neovim-demo.py                  # a tiny model trained on the demo file itself
    python docs/neovim-demo.py --model DIR      # any model folder (ONNX export or checkpoint)

The project's Neovim (.venv/bin/nvim, 0.12) runs in a tmux pane with editors/neovim's
setup(); the script types the start of a statement into a Python file, waits for the ghost
text, and captures the pane with `tmux capture-pane` (plain and with colours), then renders the
coloured capture to a PNG with matplotlib. Without --model it trains a 2-layer test model on
the demo file until it knows it by heart (as tests/test_neovim.py does), so the suggestion is
the line that the file really has there: the capture shows how a suggestion looks, not how
good a trained model is.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
DEMO = '''\
import os


def python_files(root):
    """The paths of the .py files under root, sorted."""
    paths = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in filenames:
            if name.endswith(".py"):
                paths.append(os.path.join(dirpath, name))
    return sorted(paths)
'''
LINE = 9                                     # 0-based: the line the user is typing
TYPED = "paths."                             # what is typed on it before the capture


def train_demo_model(work: Path) -> Path:
    """A tiny model that reproduces DEMO, exported to ONNX."""
    import torch
    from trainer.export import main as export_main
    from trainer.model import build_model
    from trainer.tokenizer import save_tokenizer, train_tokenizer

    stdlib = Path(sysconfig.get_paths()["stdlib"])
    texts = [(stdlib / m).read_text(encoding="utf-8") for m in ("os.py", "posixpath.py", "glob.py", "fnmatch.py")]
    tok = train_tokenizer([*texts, DEMO], vocab_size=1024)
    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = build_model("test", tok)
    ids = torch.tensor([tok.encode(DEMO).ids])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(300):
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if loss.item() < 0.02:
            break
    checkpoint = work / "checkpoint"
    model.save_pretrained(checkpoint)
    save_tokenizer(tok, checkpoint)
    out = work / "model"
    if export_main(["--checkpoint", str(checkpoint), "--output", str(out)]) != 0:
        raise SystemExit("export failed")
    return out


def capture(model: Path, work: Path, prefix: Path, width: int = 84, height: int = 16) -> None:
    lines = DEMO.splitlines()
    lines[LINE] = ""                         # the user is about to write this line
    (work / "walk.py").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (work / "init.lua").write_text(f"""
vim.opt.runtimepath:append({str(REPO / 'editors' / 'neovim')!r})
vim.o.number = true
vim.o.swapfile = false
vim.o.laststatus = 2
vim.o.statusline = ' %f %= codeparrot: %{{v:lua.require("codeparrot").status()}} '
vim.o.termguicolors = true
require('codeparrot').setup({{
  cmd = {{ {str(BIN / 'codeparrot-ls')!r}, '--stdio' }},
  model = {str(model)!r},
  settings = {{ fim = false }},
}})
""", encoding="utf-8")
    socket = f"codeparrot-demo-{id(work)}"
    tmux = ["tmux", "-L", socket]
    nvim = f"XDG_STATE_HOME={work / 'state'} {BIN / 'nvim'} -u {work / 'init.lua'} -i NONE walk.py"
    subprocess.run([*tmux, "new-session", "-d", "-s", "demo", "-x", str(width), "-y", str(height),
                    "-c", str(work), nvim], check=True)
    try:
        def pane(*flags: str) -> str:
            return subprocess.run([*tmux, "capture-pane", "-t", "demo", "-p", *flags],
                                  check=True, capture_output=True, text=True).stdout

        deadline = time.time() + 60
        while "codeparrot: ready" not in pane():
            if time.time() > deadline:
                raise SystemExit("the server did not become ready:\n" + pane())
            time.sleep(0.2)
        subprocess.run([*tmux, "send-keys", "-t", "demo", f"{LINE + 1}G", "S"], check=True)
        for key in TYPED:                    # typed one key at a time, like a user
            subprocess.run([*tmux, "send-keys", "-t", "demo", "-l", key], check=True)
            time.sleep(0.05)
        time.sleep(3)
        prefix.with_suffix(".ansi").write_text(pane("-e"), encoding="utf-8")
        prefix.with_suffix(".txt").write_text(pane(), encoding="utf-8")
    finally:
        subprocess.run([*tmux, "kill-server"], check=False)


FG, BG = (224, 226, 234), (20, 22, 27)      # Neovim's default dark colours
SGR = re.compile(r"\x1b\[([0-9;]*)m|([^\x1b]+)")


def parse_ansi(text: str) -> list[list[tuple[str, tuple, tuple, bool]]]:
    """Rows of (char, fg, bg, bold) from a capture with 24-bit SGR colours."""
    rows = []
    for line in text.split("\n")[:-1]:
        fg, bg, bold, reverse, cells = FG, BG, False, False, []
        for sgr, chunk in SGR.findall(line):
            if chunk:
                f, b = (bg, fg) if reverse else (fg, bg)
                cells += [(ch, f, b, bold) for ch in chunk]
                continue
            codes = [int(c) for c in sgr.split(";") if c] or [0]
            i = 0
            while i < len(codes):
                c = codes[i]
                if c == 0:
                    fg, bg, bold, reverse = FG, BG, False, False
                elif c in (1, 22):
                    bold = c == 1
                elif c in (7, 27):
                    reverse = c == 7
                elif c in (38, 48) and codes[i + 1:i + 2] == [2]:
                    rgb = tuple(codes[i + 2:i + 5])
                    fg, bg = (rgb, bg) if c == 38 else (fg, rgb)
                    i += 4
                elif c == 39:
                    fg = FG
                elif c == 49:
                    bg = BG
                i += 1
        rows.append(cells)
    return rows


def render_png(ansi: Path, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    rows = parse_ansi(ansi.read_text(encoding="utf-8"))
    ncols = max(len(r) for r in rows)
    cw, ch = 8.4, 17.0                       # cell size in pixels

    def rgb(c):
        return [v / 255 for v in c]

    fig = plt.figure(figsize=(ncols * cw / 100, len(rows) * ch / 100), dpi=100)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, ncols * cw)
    ax.set_ylim(len(rows) * ch, 0)
    ax.axis("off")
    ax.add_patch(Rectangle((0, 0), ncols * cw, len(rows) * ch, color=rgb(BG)))
    for y, cells in enumerate(rows):
        for x, (char, fg, bg, bold) in enumerate(cells):
            if bg != BG:
                ax.add_patch(Rectangle((x * cw, y * ch), cw, ch, color=rgb(bg), lw=0))
            if char != " ":
                ax.text(x * cw, (y + 0.78) * ch, char, color=rgb(fg), family="DejaVu Sans Mono",
                        fontsize=10.5, weight="bold" if bold else "normal")
    fig.savefig(png)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", help="model folder (default: train a tiny model on the demo file)")
    parser.add_argument("--output", default=str(REPO / "docs" / "neovim-demo"), help="output path prefix")
    args = parser.parse_args(argv)
    if shutil.which("tmux") is None:
        parser.error("tmux is needed")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model = Path(args.model).resolve() if args.model else train_demo_model(work)
        prefix = Path(args.output)
        capture(model, work, prefix)
    render_png(prefix.with_suffix(".ansi"), prefix.with_suffix(".png"))
    print(prefix.with_suffix(".txt").read_text(encoding="utf-8"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
