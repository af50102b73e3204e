#!/usr/bin/env bash
# Run WebSync on one machine: an embedded server on 127.0.0.1, a user, and the
# store mounted at a folder this script prints.  Ctrl-C unmounts and stops.
set -euo pipefail
cd "$(dirname "$0")/.."
bin="$PWD/.venv/bin"
base="${WEBSYNC_DEMO_DIR:-$HOME/websync-demo}"
port="${WEBSYNC_DEMO_PORT:-8080}"
mnt="$base/WebSync"
mkdir -p "$base/server" "$base/home" "$mnt"
export WEBSYNC_HOME="$base/home"

"$bin/websync-server" serve --data "$base/server" --host 127.0.0.1 --port "$port" &
server=$!
cleanup() {
    "$bin/websync" unmount "$mnt" 2>/dev/null || true
    kill "$server" 2>/dev/null || true
    wait "$server" 2>/dev/null || true
}
trap cleanup EXIT INT TERM
for _ in $(seq 100); do
    curl -fs "http://127.0.0.1:$port/v1/health" >/dev/null 2>&1 && break
    sleep 0.1
done

password_file="$base/password"
if [ ! -s "$password_file" ]; then
    head -c 18 /dev/urandom | base64 > "$password_file"
    chmod 600 "$password_file"
    "$bin/websync-server" user add demo --data "$base/server" --password-stdin < "$password_file"
fi
"$bin/websync" login "http://127.0.0.1:$port" --user demo --password-stdin < "$password_file"
"$bin/websync" mount "$mnt"
echo
echo "WebSync is mounted at: $mnt"
echo "Try: echo hello > '$mnt/hello.txt'; websync status (WEBSYNC_HOME=$WEBSYNC_HOME)"
echo "Press Ctrl-C to unmount and stop the server."
wait "$server"
