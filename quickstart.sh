#!/usr/bin/env bash
# From a fresh clone to a trained, exported and demonstrated model:
#   ./quickstart.sh [codeparrot quickstart options, e.g. --minutes 8 --output runs/quickstart]
set -euo pipefail
cd "$(dirname "$0")"

if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
. .venv/bin/activate
if ! python -c "import torch" 2>/dev/null; then
    # The CPU wheel first: anything that depends on torch must find it installed.
    python -m pip install -q torch==2.13.0
fi
python -m pip install -q -e ".[train]"

exec codeparrot quickstart "$@"
