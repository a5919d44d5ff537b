#!/usr/bin/env bash
# What the browser tests need: Debian's Chromium (/usr/bin/chromium) and the npm package
# playwright-core (no browser download), installed into tests/browser/node_modules.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x /usr/bin/chromium ]; then
    echo "installing Debian's chromium" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null
fi
if ! command -v node >/dev/null; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q nodejs npm >/dev/null
fi
(cd tests/browser && npm ci --no-audit --no-fund --loglevel=error)
