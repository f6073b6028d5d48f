#!/usr/bin/env bash
# The tests, from a fresh clone or an existing checkout: makes .venv when it is missing,
# installs the project with what the tests need (the CPU wheel of torch first, then
# -e ".[train,dev]"; again only when pyproject.toml changed), then runs pytest.
#   ./test.sh                   # everything, as CI runs it
#   ./test.sh -m "not slow"     # without the end-to-end tests; any pytest arguments work
set -euo pipefail
cd "$(dirname "$0")"

if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
    .venv/bin/python -m pip install -q --upgrade pip
fi
. .venv/bin/activate
if ! python -c "import sys, torch; sys.exit(torch.__version__.split('+')[0] != '2.13.0')" 2>/dev/null; then
    # The CPU wheel first: anything that depends on torch must find it installed.
    python -m pip install -q torch==2.13.0
fi
stamp=.venv/.codeparrot-test-install
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    python -m pip install -q -e ".[train,dev]"
    touch "$stamp"
fi

exec python -m pytest -q "$@"
