-- codeparrot-ls in Neovim: start the server for Python buffers, show its suggestions as ghost
-- text (built-in inline completion, Neovim 0.12+), accept with <Tab> and cycle candidates.
-- On older Neovim (no vim.lsp.inline_completion) suggestions come through the completion menu
-- (textDocument/completion) instead.
--
--   require('codeparrot').setup({
--     model = '~/codeparrot-ls/runs/quickstart/model',  -- optional: else $CODEPARROT_LS_MODEL / default
--     settings = { maxNewTokens = 32, singleLine = false },
--   })
local M = {}

local NAME = 'codeparrot'

---@class codeparrot.Keys
---@field accept string|false  accept the ghost text; falls through to the key itself when none is shown
---@field accept_word string|false accept the suggestion's next word (falls through likewise)
---@field accept_line string|false accept the suggestion's next line (falls through likewise)
---@field next string|false    next candidate
---@field prev string|false    previous candidate
---@field invoke string|false  ask explicitly (several sampled candidates)
---@field complete string|false open the completion menu (fallback path only)

---@class codeparrot.Options
---@field cmd string[]           server command (without --model / --engine)
---@field model? string          model folder, passed as --model and initializationOptions.model
---@field engine? 'auto'|'onnx'|'torch'
---@field settings table         camelCase keys of codeparrot_ls/settings.py
---@field inline? boolean        ghost text; default: when this Neovim supports it
---@field completion? boolean    textDocument/completion via the menu; default: when inline is off
---@field keys codeparrot.Keys
local defaults = {
  cmd = { 'codeparrot-ls', '--stdio' },
  model = nil,
  engine = nil,
  settings = {},
  inline = nil,
  completion = nil,
  keys = {
    accept = '<Tab>', accept_word = '<C-Right>', accept_line = '<C-Down>',
    next = '<M-]>', prev = '<M-[>', invoke = '<M-\\>', complete = '<C-Space>',
  },
}

---@type codeparrot.Options
M.options = vim.deepcopy(defaults)

local function has_inline()
  return vim.lsp.inline_completion ~= nil
end

--- The full client config: the base from lsp/codeparrot.lua plus the user's options.
---@param opts codeparrot.Options
local function client_config(opts)
  local cmd = vim.deepcopy(opts.cmd)
  if opts.engine then
    vim.list_extend(cmd, { '--engine', opts.engine })
  end
  local init_options = vim.deepcopy(opts.settings)
  if opts.model then
    -- Absolute: the server's working directory is the project root, not Neovim's.
    local model = vim.fn.fnamemodify(vim.fs.normalize(opts.model), ':p'):gsub('/$', '')
    vim.list_extend(cmd, { '--model', model })
    init_options.model = model
  end
  local config = {
    cmd = cmd,
    init_options = init_options,
    settings = { codeparrot = vim.deepcopy(opts.settings) },
  }
  if not opts.inline then
    -- The server answers textDocument/completion only for clients without inline completion
    -- (else it would run the model twice per keystroke): say so when ghost text is off.
    config.before_init = function(params)
      if params.capabilities and params.capabilities.textDocument then
        params.capabilities.textDocument.inlineCompletion = nil
      end
    end
  end
  return config
end

local function codeparrot_clients(bufnr)
  return vim.lsp.get_clients({ name = NAME, bufnr = bufnr })
end

--- Accept the ghost text. Returns true when something was accepted (usable in an <expr> map).
function M.accept()
  return has_inline() and vim.lsp.inline_completion.get() or false
end

--- The part of `text` a partial accept takes: for 'word', blanks then a run of word characters
--- (or of other non-blank characters); for 'line', the rest of the first line, or - when the
--- text starts with a line break - that break and the next line.
function M.next_part(text, unit)
  if unit == 'line' then
    local lead = text:match('^\n') or ''
    return lead .. text:sub(#lead + 1):match('^[^\n]*')
  end
  return text:match('^%s*[%w_]+') or text:match('^%s*[^%w_%s]+') or text
end

--- The server's line break for this buffer's suggestions (Neovim sends the buffer's lines
--- joined with it, and the server writes suggestions with the document's line break).
local function line_break(bufnr)
  return ({ dos = '\r\n', mac = '\r' })[vim.bo[bufnr].fileformat] or '\n'
end

local function utf16_len(text)
  return vim.str_utfindex(text, 'utf-16')
end

--- Insert the start of the ghost text: its next word ('word') or line ('line'). Tells the
--- server (textDocument/didPartiallyAcceptCompletion, counted in codeparrot.stats); taking all
--- of it is a whole accept (its accept command runs). Returns false when nothing is shown.
function M.accept_part(unit)
  if not has_inline() then
    return false
  end
  local bufnr = vim.api.nvim_get_current_buf()
  return vim.lsp.inline_completion.get({
    on_accept = function(item)
      local text = type(item.insert_text) == 'string' and item.insert_text or item.insert_text.value
      local part = M.next_part(text, unit)
      local row, col
      if item.range then
        row, col = item.range.start.row, item.range.start.col
      else
        local cursor = vim.api.nvim_win_get_cursor(0)
        row, col = cursor[1] - 1, cursor[2]
      end
      local lines = vim.split(part, '\n', { plain = true })
      vim.api.nvim_buf_set_text(bufnr, row, col, row, col, lines)
      vim.api.nvim_win_set_cursor(0, { row + #lines, (#lines == 1 and col or 0) + #lines[#lines] })
      local client = vim.lsp.get_client_by_id(item.client_id)
      if not client then
        return
      end
      if #part == #text then
        if item.command then
          client:exec_cmd(item.command, { bufnr = bufnr })
        end
        return
      end
      -- Lengths in the server's text: its line breaks, UTF-16 code units from insertText's start.
      local eol = line_break(bufnr)
      client:notify('textDocument/didPartiallyAcceptCompletion', {
        item = { insertText = text:gsub('\n', eol), command = item.command },
        acceptedLength = utf16_len(part) + select(2, part:gsub('\n', '')) * (#eol - 1),
      })
    end,
  })
end

--- Move to the next (count > 0) or previous (count < 0) candidate.
function M.cycle(count)
  if has_inline() then
    vim.lsp.inline_completion.select({ count = count })
  end
end

--- Ask for suggestions explicitly: the server then samples several candidates to cycle through.
--- Neovim has no public call for an explicit inline request yet; this uses its inline-completion
--- state and does nothing (with a message) where that is missing.
function M.invoke()
  local ok, capability = pcall(require, 'vim.lsp._capability')
  local completor = ok and capability.all and capability.all.inline_completion
  completor = completor and completor.active and completor.active[vim.api.nvim_get_current_buf()]
  if not completor or type(completor.request) ~= 'function' then
    vim.notify('codeparrot: explicit inline requests need Neovim 0.12', vim.log.levels.WARN)
    return
  end
  completor:request(vim.lsp.protocol.InlineCompletionTriggerKind.Invoked)
end

--- Change completion settings at run time, e.g. M.set({ singleLine = true }).
function M.set(settings)
  M.options.settings = vim.tbl_extend('force', M.options.settings, settings)
  for _, client in ipairs(codeparrot_clients()) do
    client.settings = { codeparrot = vim.deepcopy(M.options.settings) }
    local params = { settings = client.settings }
    if vim.fn.has('nvim-0.11') == 1 then
      client:notify('workspace/didChangeConfiguration', params)
    else
      client.notify('workspace/didChangeConfiguration', params)
    end
  end
end

function M.toggle()
  M.set({ enabled = M.options.settings.enabled == false })
  vim.notify('codeparrot: suggestions ' .. (M.options.settings.enabled and 'on' or 'off'))
end

--- For statuslines: 'loading', 'ready', 'error' (from the server's $/codeparrot/status), or ''.
function M.status()
  return vim.g.codeparrot_status or ''
end

local function map(bufnr, lhs, rhs, desc, expr)
  if lhs then
    vim.keymap.set('i', lhs, rhs, { buffer = bufnr, expr = expr, desc = desc })
  end
end

--- Neovim's completion inserts only the first word of a plain-text edit (the menu "word") and
--- applies the full edit only for snippets; a suggestion is a whole line or block, so on
--- CompleteDone replace that word with the item's full text.
local function complete_done(client_id, bufnr)
  local item = vim.v.completed_item
  local lsp_data = type(item) == 'table' and type(item.user_data) == 'table' and item.user_data.nvim
  lsp_data = lsp_data and lsp_data.lsp
  local completion = lsp_data and lsp_data.completion_item
  if not completion or (lsp_data.client_id and lsp_data.client_id ~= client_id) then
    return
  end
  local edit = completion.textEdit
  if not edit or completion.insertTextFormat == vim.lsp.protocol.InsertTextFormat.Snippet then
    return -- snippets are expanded by Neovim itself
  end
  local new_text = edit.newText
  if new_text == item.word then
    return
  end
  local row, col = unpack(vim.api.nvim_win_get_cursor(0))
  local word_start = col - #item.word
  if word_start < 0 or vim.api.nvim_buf_get_text(bufnr, row - 1, word_start, row - 1, col, {})[1] ~= item.word then
    return -- the text was changed in the meantime: leave it alone
  end
  local lines = vim.split(new_text, '\n', { plain = true })
  vim.api.nvim_buf_set_text(bufnr, row - 1, word_start, row - 1, col, lines)
  local last_col = (#lines == 1 and word_start or 0) + #lines[#lines]
  vim.api.nvim_win_set_cursor(0, { row + #lines - 1, last_col })
end

--- Neovim buffers hold lines, and its inline completion splits a suggestion at "\n" only: a
--- suggestion written with "\r\n" (the server keeps a dos file's line break) would show and
--- insert stray "\r"s. Give Neovim the text with "\n" breaks.
local function lines_only(client)
  if client._codeparrot_lines_only then
    return
  end
  client._codeparrot_lines_only = true
  local request = client.request
  client.request = function(self, method, params, handler, bufnr)
    if method == 'textDocument/inlineCompletion' and handler then
      local inner = handler
      handler = function(err, result, ctx, config)
        for _, item in ipairs(type(result) == 'table' and (result.items or result) or {}) do
          if type(item.insertText) == 'string' then
            item.insertText = item.insertText:gsub('\r\n?', '\n')
          end
        end
        return inner(err, result, ctx, config)
      end
    end
    return request(self, method, params, handler, bufnr)
  end
end

local function on_attach(client, bufnr)
  local opts = M.options
  local keys = opts.keys
  if opts.inline then
    lines_only(client)
    vim.lsp.inline_completion.enable(true, { bufnr = bufnr })
    map(bufnr, keys.accept, function()
      if M.accept() then
        return ''
      end
      return vim.keycode(keys.accept)
    end, 'codeparrot: accept suggestion', true)
    for unit, lhs in pairs({ word = keys.accept_word, line = keys.accept_line }) do
      map(bufnr, lhs, function()
        if M.accept_part(unit) then
          return ''
        end
        return vim.keycode(lhs)
      end, 'codeparrot: accept the next ' .. unit, true)
    end
    map(bufnr, keys.next, function() M.cycle(1) end, 'codeparrot: next suggestion')
    map(bufnr, keys.prev, function() M.cycle(-1) end, 'codeparrot: previous suggestion')
    map(bufnr, keys.invoke, M.invoke, 'codeparrot: ask for suggestions')
  end
  if opts.completion then
    vim.api.nvim_create_autocmd('CompleteDone', {
      group = vim.api.nvim_create_augroup('codeparrot.complete.' .. bufnr, { clear = true }),
      buffer = bufnr,
      callback = function()
        complete_done(client.id, bufnr)
      end,
    })
    if vim.lsp.completion and vim.lsp.completion.enable then
      -- Applies the item's text edit and runs its command on <C-y>.
      vim.lsp.completion.enable(true, client.id, bufnr, { autotrigger = false })
      map(bufnr, keys.complete, function() vim.lsp.completion.get() end, 'codeparrot: completion menu')
    else
      vim.bo[bufnr].omnifunc = 'v:lua.vim.lsp.omnifunc'
      map(bufnr, keys.complete, '<C-x><C-o>', 'codeparrot: completion menu')
    end
  end
end

---@param opts? codeparrot.Options|table
function M.setup(opts)
  if vim.fn.has('nvim-0.10') == 0 then
    vim.notify('codeparrot: Neovim 0.10 or newer is needed', vim.log.levels.ERROR)
    return
  end
  opts = vim.tbl_deep_extend('force', vim.deepcopy(defaults), opts or {})
  if opts.inline == nil then
    opts.inline = has_inline()
  elseif opts.inline and not has_inline() then
    vim.notify('codeparrot: this Neovim has no inline completion; using the completion menu',
      vim.log.levels.WARN)
    opts.inline = false
  end
  if opts.completion == nil then
    opts.completion = not opts.inline
  end
  M.options = opts

  local group = vim.api.nvim_create_augroup('codeparrot', { clear = true })
  vim.api.nvim_create_autocmd('LspAttach', {
    group = group,
    callback = function(args)
      local client = vim.lsp.get_client_by_id(args.data.client_id)
      if client and client.name == NAME then
        on_attach(client, args.buf)
      end
    end,
  })

  vim.api.nvim_create_user_command('CodeparrotToggle', M.toggle, { desc = 'codeparrot: suggestions on/off' })
  vim.api.nvim_create_user_command('CodeparrotStatus', function()
    print('codeparrot: ' .. (M.status() ~= '' and M.status() or 'not started'))
  end, { desc = 'codeparrot: server status' })

  if vim.lsp.config then
    -- Neovim 0.11+: merged over lsp/codeparrot.lua from the runtimepath.
    vim.lsp.config(NAME, client_config(opts))
    vim.lsp.enable(NAME)
  else
    -- Neovim 0.10: start the client ourselves for each Python buffer.
    local base_file = vim.api.nvim_get_runtime_file('lsp/codeparrot.lua', false)[1]
    local base = base_file and dofile(base_file) or {}
    local config = vim.tbl_deep_extend('force', base, client_config(opts), { name = NAME })
    vim.api.nvim_create_autocmd('FileType', {
      group = group,
      pattern = config.filetypes or { 'python' },
      callback = function(args)
        local start_config = vim.deepcopy(config)
        start_config.root_dir = vim.fs.root(args.buf, config.root_markers or { '.git' })
        vim.lsp.start(start_config, { bufnr = args.buf })
      end,
    })
  end
end

return M
