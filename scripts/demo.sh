#!/usr/bin/env bash
# make demo: create a signed CernVM-FS repository, ingest two layers (gzip and zstd), serve it
# over HTTP on loopback, read it back through the server with signature and hash checks, mount it
# with our FUSE client, and run a thin image from it through the graphdriver plugin in a private
# dockerd (the last two need root, /dev/fuse and Debian's docker.io).
set -euo pipefail
cd "$(dirname "$0")/.."
CLI="node dist/cvmfs/cli.js"
work=$(mktemp -d /tmp/cvmfs-demo.XXXXXX)
srv= mnt_pid=
cleanup() {
  [ -n "$mnt_pid" ] && { kill "$mnt_pid" 2>/dev/null; wait "$mnt_pid" 2>/dev/null; umount -l "$work/mnt" 2>/dev/null; }
  [ -n "$srv" ] && kill "$srv" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
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

step "mount it with our client (FUSE, read-only, files fetched and verified on first read)"
if [ "$(id -u)" = 0 ] && [ -e /dev/fuse ]; then
  mkdir -p "$work/mnt"
  $CLI mount --url "$url" --name $FQRN --pubkey "$work/keys/$FQRN.pub" --cache "$work/cache" "$work/mnt" > "$work/mount.log" 2>&1 &
  mnt_pid=$!
  for _ in $(seq 100); do grep -q " $work/mnt fuse" /proc/mounts && break; sleep 0.1; done
  grep -q " $work/mnt fuse" /proc/mounts || { cat "$work/mount.log"; exit 1; }
  ls -l "$work/mnt/layers/app/opt/app"
  echo "run.sh: $(cat "$work/mnt/layers/app/opt/app/run.sh")"
  echo "client counters: $(getfattr --absolute-names --only-values -n user.counters "$work/mnt")"
  kill "$mnt_pid"; wait "$mnt_pid" 2>/dev/null || true; mnt_pid=
else
  echo "*** skipped: needs root and /dev/fuse ***"
fi

node dist/scripts/demo-docker.js "$work/repo" "$work/keys" $FQRN "$url"
echo
echo "demo done. A stock cvmfs2 client mounts such a repository with (this one is removed on exit):"
echo "  CVMFS_SERVER_URL=$url  CVMFS_PUBLIC_KEY=$work/keys/$FQRN.pub  CVMFS_HTTP_PROXY=DIRECT"
