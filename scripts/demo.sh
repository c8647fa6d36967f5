#!/usr/bin/env bash
# make demo: create an empty signed CernVM-FS repository and serve it on loopback, then (root,
# /dev/fuse, Debian's docker.io and docker-registry) build a sample image, push it to a local
# registry, convert it with `docker2cvmfs convert --push`, and pull and run its thin image through
# the managed plugin in a private dockerd (scripts/demo-docker.ts). Everything is removed on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
CLI="node dist/cvmfs/cli.js"
work=$(mktemp -d /tmp/cvmfs-demo.XXXXXX)
srv=
cleanup() {
  if [ -n "$srv" ]; then kill "$srv" 2>/dev/null || true; wait "$srv" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
FQRN=demo.example.org
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "init: an empty signed repository in $work/repo, keys in $work/keys"
$CLI init --dir "$work/repo" --keys "$work/keys" --name $FQRN

step "the repository server: cvmfs-repo serve on loopback (the stratum 0 the plugin reads)"
$CLI serve --dir "$work/repo" --port 0 > "$work/serve.log" 2>&1 &
srv=$!
for _ in $(seq 50); do grep -q '^serving' "$work/serve.log" 2>/dev/null && break; sleep 0.1; done
url=$(sed -n 's/^serving .* at //p' "$work/serve.log")
[ -n "$url" ] || { cat "$work/serve.log"; exit 1; }
echo "server: $url"

node dist/scripts/demo-docker.js "$work/repo" "$work/keys" $FQRN "$url"
echo
echo "demo done in ${SECONDS}s. A stock cvmfs2 client mounts such a repository with (this one is removed on exit):"
echo "  CVMFS_SERVER_URL=$url  CVMFS_PUBLIC_KEY=$work/keys/$FQRN.pub  CVMFS_HTTP_PROXY=DIRECT"
