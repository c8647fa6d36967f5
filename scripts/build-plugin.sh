#!/usr/bin/env bash
# Builds the managed (v2) plugin bundle in $PLUGIN_OUT (default build/plugin)/{config.json,rootfs} and, unless
# NO_CREATE=1, runs `docker plugin create $PLUGIN_NAME <that dir>` against $DOCKER_HOST.
# The rootfs holds only what the plugin runs: node and the libraries it and the native addons link
# against, busybox (sh, mount, umount, mknod), fusermount, setfattr/getfattr, the built code and the
# production node_modules.
set -euo pipefail
cd "$(dirname "$0")/.."
NAME=${PLUGIN_NAME:-cvmfs}
out=${PLUGIN_OUT:-build/plugin}
root=$out/rootfs
app=$root/opt/cvmfs-graphdriver
rm -rf "$out"
mkdir -p "$root"/{usr/bin,bin,lib,lib64,tmp,state,data,etc/cvmfs-graphdriver,run/docker/plugins,dev,proc,sys} "$app"
chmod 1777 "$root/tmp"

copy_with_libs() { # file [dest]
  local src=$1 dest=${2:-$1}
  mkdir -p "$root$(dirname "$dest")"
  cp -L "$src" "$root$dest"
  { ldd "$src" 2>/dev/null || true; } | awk '/=> \//{print $3} /^[ \t]*\//{print $1}' | while read -r lib; do
    [ -e "$root$lib" ] || { mkdir -p "$root$(dirname "$lib")"; cp -L "$lib" "$root$lib"; }
  done
}

copy_with_libs "$(readlink -f "$(command -v node)")" /usr/bin/node
copy_with_libs /usr/bin/fusermount
copy_with_libs /usr/bin/setfattr
copy_with_libs /usr/bin/getfattr
cp /bin/busybox "$root/bin/busybox"
for a in sh mount umount mknod mkdir rm ls cat; do ln -sf busybox "$root/bin/$a"; done
ln -sf ../../bin/busybox "$root/usr/bin/env"

cp -a dist package.json package-lock.json "$app/"
rm -rf "$app/dist/test" "$app/dist/bench" "$app/dist/scripts"
cp -a node_modules "$app/"
(cd "$app" && npm prune --omit=dev --ignore-scripts --no-audit --no-fund >/dev/null 2>&1)
# Build intermediates and bundled C sources of the native addons are not needed at run time.
for m in better-sqlite3 zstd-napi fuse-native; do
  rm -rf "$app/node_modules/$m"/{deps,src,build/Release/obj.target,build/Release/.deps,build/deps}
done
find "$app/node_modules" -path '*/prebuilds/*' -prune \( -name 'darwin-*' -o -name 'win32-*' -o -name 'electron*' -o -name 'android-*' \) -exec rm -rf {} + 2>/dev/null || true
for lib in $(find "$app/node_modules" -name '*.node' -o -name 'libfuse.so*'); do
  { ldd "$lib" 2>/dev/null || true; } | awk '/=> \//{print $3}' | while read -r l; do
    [ -e "$root$l" ] || { mkdir -p "$root$(dirname "$l")"; cp -L "$l" "$root$l"; }
  done
done
cp plugin/config.json "$out/config.json"
env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin chroot "$root" /usr/bin/node -e 'require("/opt/cvmfs-graphdriver/node_modules/better-sqlite3"); require("/opt/cvmfs-graphdriver/node_modules/fuse-native"); require("/opt/cvmfs-graphdriver/node_modules/zstd-napi")' \
  || { echo "the plugin rootfs cannot load its native modules" >&2; exit 1; }
echo "plugin rootfs: $(du -sh "$root" | cut -f1) ($(du -sh "$app/node_modules" | cut -f1) node_modules, node $(du -sh "$root/usr/bin/node" | cut -f1))"
if [ "${NO_CREATE:-0}" != 1 ]; then
  docker plugin rm -f "$NAME" >/dev/null 2>&1 || true
  docker plugin create "$NAME" "$out"
  echo "created plugin $NAME; next: docker plugin set $NAME ...; docker plugin enable $NAME; dockerd --experimental -s $NAME"
fi
