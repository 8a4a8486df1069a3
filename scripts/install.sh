#!/usr/bin/env bash
# Installs what qfs needs on a fresh Debian/Ubuntu machine: FUSE 3 (pyfuse3 builds against
# it), the tools the tests drive (vim, rsync, attr), and a virtual environment in .venv.
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
$SUDO apt-get update -q
$SUDO apt-get install -y -q fuse3 libfuse3-dev pkg-config vim-tiny vim rsync attr >/dev/null
python3 -m venv .venv
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q -e '.[test]'
