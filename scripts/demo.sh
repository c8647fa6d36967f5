#!/usr/bin/env bash
# make demo: create a signed CernVM-FS repository, ingest two layers (gzip and zstd), serve it
# over HTTP on loopback, and read it back through the server with signature and hash checks.
set -euo pipefail
cd "$(dirname "$0")/.."
CLI="node dist/cvmfs/cli.js"
work=$(mktemp -d /tmp/cvmfs-demo.XXXXXX)
trap 'kill $srv 2>/dev/null || true; rm -rf "$work"' EXIT
FQRN=demo.example.org
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "init: repository tree in $work/repo, keys in $work/keys"
$CLI init --dir "$work/repo" --keys "$work/keys" --name $FQRN

step "layer 1: a gzip tar of /usr/share/common-licenses → /layers/base"
tar -C /usr/share -czf "$work/base.tar.gz" common-licenses
$CLI ingest --dir "$work/repo" --keys "$work/keys" --path /layers/base "$work/base.tar.gz"

step "layer 2: a zstd tar (a 12 MiB file, chunked; a hardlink; a whiteout) read from stdin → /layers/app"
mkdir -p "$work/app/opt/app"
head -c 12582912 /dev/urandom > "$work/app/opt/app/model.bin"
echo 'echo hello from the app' > "$work/app/opt/app/run.sh"
ln "$work/app/opt/app/run.sh" "$work/app/opt/app/start.sh"
: > "$work/app/opt/.wh.old-app"
node -e '
  const { compress } = require("zstd-napi"); const fs = require("fs");
  process.stdout.write(compress(fs.readFileSync(0)));' < <(tar -C "$work/app" -cf - .) \
  | $CLI ingest --dir "$work/repo" --keys "$work/keys" --path /layers/app -

step "info"
$CLI info --dir "$work/repo"

step "serve on loopback and read everything back through HTTP, verifying signatures and hashes"
$CLI serve --dir "$work/repo" --port 0 > "$work/serve.log" 2>&1 &
srv=$!
for _ in $(seq 50); do grep -q '^serving' "$work/serve.log" 2>/dev/null && break; sleep 0.1; done
url=$(sed -n 's/^serving .* at //p' "$work/serve.log")
[ -n "$url" ] || { cat "$work/serve.log"; exit 1; }
echo "server: $url"
node --input-type=module -e "
  const url = process.argv[1];
  const m = await fetch(url + '/.cvmfspublished');
  console.log('GET .cvmfspublished', m.status, 'Cache-Control:', m.headers.get('cache-control'));
  const text = Buffer.from(await m.arrayBuffer());
  console.log(text.subarray(0, text.indexOf('\n--\n')).toString().replace(/^/gm, '  '));
" "$url"
node dist/scripts/demo-verify.js "$url" "$work/keys/$FQRN.pub" $FQRN
echo
echo "demo done: the repository above is what a stock cvmfs2 client mounts with"
echo "  CVMFS_SERVER_URL=$url  CVMFS_PUBLIC_KEY=$work/keys/$FQRN.pub  CVMFS_HTTP_PROXY=DIRECT"
