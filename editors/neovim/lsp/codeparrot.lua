-- codeparrot-ls for Neovim 0.11+: with editors/neovim on 'runtimepath',
--   vim.lsp.enable('codeparrot')
-- starts the server for Python buffers. Override any field with vim.lsp.config('codeparrot', {...}),
-- e.g. the model folder (else the server uses $CODEPARROT_LS_MODEL or its default model):
--   vim.lsp.config('codeparrot', { cmd = { 'codeparrot-ls', '--stdio', '--model', '/path/to/model' } })
-- For ghost text, cycling and a Tab mapping, use require('codeparrot').setup{} instead (or as well).

---@type vim.lsp.Config
return {
  cmd = { 'codeparrot-ls', '--stdio' },
  filetypes = { 'python' },
  -- Without any marker the server still starts, rooted at nothing (single-file mode).
  root_markers = { 'pyproject.toml', 'setup.py', 'setup.cfg', 'requirements.txt', '.git' },
  -- Flat camelCase keys of codeparrot_ls/settings.py (CompletionSettings), plus `model`.
  init_options = {},
  -- The same keys under the section name, for `workspace/configuration` requests.
  settings = { codeparrot = {} },
  handlers = {
    -- loading / ready / error: kept for statuslines, errors shown to the user.
    ['$/codeparrot/status'] = function(_, params)
      params = params or {}
      vim.g.codeparrot_status = params.state
      vim.cmd.redrawstatus({ bang = true })
      if vim.g.codeparrot_status == 'error' then
        vim.notify('codeparrot-ls: ' .. tostring(params.message or 'error'), vim.log.levels.ERROR)
      end
    end,
  },
}
