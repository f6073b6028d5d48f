#!/usr/bin/env bash
# Reproduce docs/neovim-demo.txt (plain) and docs/neovim-demo.ansi (with colours): the project's
# Neovim (.venv/bin/nvim, 0.12) in a tmux pane, editors/neovim's setup(), a few keys typed into
# a Python file, and the ghost text codeparrot-ls suggests, captured with `tmux capture-pane`.
#
#   docs/neovim-demo.sh MODEL_DIR
set -euo pipefail
cd "$(dirname "$0")/.."
model=$(realpath "${1:?usage: docs/neovim-demo.sh MODEL_DIR}")
repo=$PWD
work=$(mktemp -d)
socket=codeparrot-demo-$$
trap 'tmux -L "$socket" kill-server 2>/dev/null || true; rm -rf "$work"' EXIT

cat > "$work/walk.py" <<'PY'
import os


def python_files(root):
    """The paths of the .py files under root, sorted."""
    paths = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in filenames:
            if name.endswith(".py"):

    return sorted(paths)
PY

cat > "$work/init.lua" <<LUA
vim.opt.runtimepath:append('$repo/editors/neovim')
vim.o.number = true
vim.o.laststatus = 2
vim.o.swapfile = false
vim.o.statusline = ' %f %= codeparrot: %{v:lua.require("codeparrot").status()} '
vim.o.termguicolors = true
vim.cmd.colorscheme('default')
require('codeparrot').setup({
  cmd = { '$repo/.venv/bin/codeparrot-ls', '--stdio' },
  model = '$model',
  settings = { maxNewTokens = 32 },
})
LUA

tmux -L "$socket" new-session -d -s demo -x 84 -y 18 -c "$work" \
  "XDG_STATE_HOME=$work/state $repo/.venv/bin/nvim -u $work/init.lua -i NONE walk.py"
capture() { tmux -L "$socket" capture-pane -t demo -p "$@"; }
for _ in $(seq 100); do capture | grep -q "codeparrot: ready" && break; sleep 0.2; done
capture | grep -q "codeparrot: ready" || { capture; echo "the server did not become ready" >&2; exit 1; }

# Line 10 is the empty line inside the `if`: type the start of the statement like a user would.
tmux -L "$socket" send-keys -t demo "10G" "S"
for key in p a t h s .; do tmux -L "$socket" send-keys -t demo "$key"; sleep 0.05; done
sleep 3
capture -e > docs/neovim-demo.ansi
capture > docs/neovim-demo.txt
"$repo/.venv/bin/python" - docs/neovim-demo.ansi docs/neovim-demo.png <<'PY'
# Render the capture's text and 24-bit SGR colours to a PNG (monospace, one glyph per cell).
import re
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.patches import Rectangle

FG, BG = (224, 226, 234), (20, 22, 27)          # Neovim's default dark colours
BASIC = [(0, 0, 0), (205, 49, 49), (13, 188, 121), (229, 229, 16), (36, 114, 200), (188, 63, 188),
         (17, 168, 205), (229, 229, 229)]
BRIGHT = [(102, 102, 102), (241, 76, 76), (35, 209, 139), (245, 245, 67), (59, 142, 234),
          (214, 112, 214), (41, 184, 219), (255, 255, 255)]

rows = []
for line in open(sys.argv[1], encoding="utf-8").read().split("\n")[:-1]:
    fg, bg, bold, reverse, cells = FG, BG, False, False, []
    for sgr, text in re.findall(r"\x1b\[([0-9;]*)m|([^\x1b]+)", line):
        if text:
            f, b = (bg, fg) if reverse else (fg, bg)
            cells += [(ch, f, b, bold) for ch in text]
            continue
        codes = [int(c) for c in sgr.split(";") if c] or [0]
        i = 0
        while i < len(codes):
            c = codes[i]
            if c == 0:
                fg, bg, bold, reverse = FG, BG, False, False
            elif c == 1:
                bold = True
            elif c == 22:
                bold = False
            elif c == 7:
                reverse = True
            elif c == 27:
                reverse = False
            elif c in (38, 48) and codes[i + 1:i + 2] == [2]:
                rgb = tuple(codes[i + 2:i + 5])
                fg, bg = (rgb, bg) if c == 38 else (fg, rgb)
                i += 4
            elif 30 <= c <= 37 or 90 <= c <= 97:
                fg = (BASIC if c < 90 else BRIGHT)[c % 10]
            elif 40 <= c <= 47 or 100 <= c <= 107:
                bg = (BASIC if c < 100 else BRIGHT)[c % 10]
            elif c == 39:
                fg = FG
            elif c == 49:
                bg = BG
            i += 1
    rows.append(cells)

ncols = max(len(r) for r in rows)
cw, chh = 8.4, 17.0                                  # cell size in pixels
fig = plt.figure(figsize=(ncols * cw / 100, len(rows) * chh / 100), dpi=100)
ax = fig.add_axes((0, 0, 1, 1))
ax.set_xlim(0, ncols * cw)
ax.set_ylim(len(rows) * chh, 0)
ax.axis("off")
ax.add_patch(Rectangle((0, 0), ncols * cw, len(rows) * chh, color=[v / 255 for v in BG]))
for y, cells in enumerate(rows):
    for x, (ch, f, b, bold) in enumerate(cells):
        if b != BG:
            ax.add_patch(Rectangle((x * cw, y * chh), cw, chh, color=[v / 255 for v in b], lw=0))
        if ch != " ":
            ax.text(x * cw, (y + 0.78) * chh, ch, color=[v / 255 for v in f], family="DejaVu Sans Mono",
                    fontsize=10.5, weight="bold" if bold else "normal")
fig.savefig(sys.argv[2])
PY
cat docs/neovim-demo.txt
