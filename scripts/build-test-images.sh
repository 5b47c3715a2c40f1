#!/usr/bin/env bash
# Builds Ketch's own test and demo images: real Debian rootfs, real OCI layers.
#
#   scripts/build-test-images.sh OUT
#
# OUT/oci is an OCI image layout with these tags:
#
#   demo-base  Debian bookworm minbase (debootstrap), layer written by umoci     1 layer
#              config: cmd /bin/sh, env PATH
#   demo-app   demo-base + 2 layers written by GNU tar, added with
#              `umoci raw add-layer` (umoci's own repack never writes opaque
#              whiteouts and rounds mtimes to seconds, so these two are hand-made):
#     layer 2 (tar --format=pax): /opt/app with run.sh, a 5 MB random file and a
#              copy of it (dedup), a hardlink, relative and absolute symlinks, a
#              fifo, a char device (1:3), a setuid file, a sticky directory, a file
#              owned by 1000:1000, a user.* xattr, a 200-char file name in a path
#              longer than 100 chars (PAX path records), an empty file, a file with
#              a nanosecond mtime (PAX mtime record), a file and a directory that
#              layer 3 removes.
#     layer 3 (tar --format=gnu): whiteouts for a file of layer 2 and a file of
#              layer 1 (etc/issue.net), an opaque whiteout replacing
#              /opt/app/conf, 64 KiB rewritten inside the 5 MB file, and the
#              long-named file changed (GNU ././@LongLink long names).
#              config: cmd ["/bin/sh", "/opt/app/run.sh"], workingdir /opt/app;
#              run.sh prints "ketch-demo ok".
#
# All mtimes under /opt are 2024-01-01T00:00:00Z except the nanosecond one. After
# building, the script unpacks demo-app with umoci and checks the result matches
# the tree it meant to build (names, types, modes, owners, sizes, link counts,
# mtimes, device numbers, xattrs, contents); any difference fails the build.
#
# OUT/cache keeps the debootstrap tarball (--make-tarball), so a rebuild does not
# download packages again. The layout is built aside and moved to OUT/oci only when
# complete, so OUT/oci/index.json existing means the build finished.
#
# Needs root and the Debian packages debootstrap, umoci, skopeo, attr, tar
# (scripts/install-system-deps.sh installs them). DEBIAN_MIRROR overrides the
# Debian mirror debootstrap downloads from.
set -euo pipefail
export TZ=UTC LC_ALL=C

out=${1:?usage: build-test-images.sh OUT}
suite=bookworm
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
epoch=1704067200 # 2024-01-01T00:00:00Z, mtime of everything under /opt
ns_mtime='2021-02-03 04:05:06.123456789'

die() { echo "build-test-images: $*" >&2; exit 1; }
((EUID == 0)) || die "needs root (device nodes, chown, debootstrap)"
for tool in debootstrap umoci skopeo setfattr getfattr tar flock findmnt; do
  command -v "$tool" >/dev/null || die "missing tool '$tool' (run scripts/install-system-deps.sh)"
done

mkdir -p "$out/cache"
out=$(cd "$out" && pwd)
exec 9>"$out/.build.lock"
flock 9 # one build per OUT at a time

work=$(mktemp -d "$out/work.XXXXXX")
cleanup() {
  local mp
  # Unmount whatever debootstrap or a chroot left mounted under $work, deepest first,
  # before deleting anything, and never cross into another filesystem.
  findmnt -rn -o TARGET | awk -v w="$work/" 'index($0, w) == 1' | sort -r |
    while read -r mp; do umount -l "$mp" 2>/dev/null || true; done
  rm -rf --one-file-system "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

oci=$work/oci # moved to $out/oci at the very end
umoci init --layout "$oci"
start=$SECONDS

# --- demo-base: debootstrap minbase, one umoci layer ----------------------------
tarball=$out/cache/$suite-minbase.tgz
if [[ ! -s $tarball ]]; then
  echo "debootstrap: downloading $suite minbase packages (cached in $tarball)"
  debootstrap --variant=minbase --make-tarball="$tarball.tmp" "$suite" "$work/tb" "$mirror" >/dev/null
  mv "$tarball.tmp" "$tarball"
  rm -rf "$work/tb"
fi

umoci new --image "$oci:demo-base"
umoci unpack --image "$oci:demo-base" "$work/base" >/dev/null
debootstrap --variant=minbase --unpack-tarball="$tarball" "$suite" "$work/base/rootfs" "$mirror" >/dev/null
umount "$work/base/rootfs/proc" "$work/base/rootfs/sys" 2>/dev/null || true
if findmnt -rn -o TARGET | grep -qF "$work/base/"; then # repack would archive /proc
  die "still mounted under $work/base: $(findmnt -rn -o TARGET | grep -F "$work/base/" | xargs)"
fi
# what an image should not ship: package lists (49 MB), the build host's DNS and name
(cd "$work/base/rootfs" && rm -rf var/cache/apt/archives/*.deb var/lib/apt/lists/* debootstrap)
: >"$work/base/rootfs/etc/resolv.conf"
echo localhost >"$work/base/rootfs/etc/hostname"
umoci repack --image "$oci:demo-base" --history.created_by "debootstrap --variant=minbase $suite" \
  "$work/base" >/dev/null
umoci config --image "$oci:demo-base" --config.cmd /bin/sh \
  --config.env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin >/dev/null
rm -rf "$work/base"

# --- demo-app -------------------------------------------------------------------
# $R is the tree demo-app should unpack to: layer 2 and layer 3 are cut from it.
umoci tag --image "$oci:demo-base" demo-app
umoci unpack --image "$oci:demo-app" "$work/app" >/dev/null
R=$work/app/rootfs
A=$R/opt/app
long_dir=deep$(printf '/level-%02d' $(seq 1 12)) # 12 levels: 112 chars below /opt/app
long_name=long-name-$(printf 'x%.0s' $(seq 1 190)) # 200 chars

# clamp DIR: every mtime under DIR (not following symlinks) becomes $epoch, except
# the nanosecond file.
clamp() {
  find "$1" -exec touch -h -d "@$epoch" {} +
  touch -h -d "$ns_mtime" "$A/timestamp-ns.txt"
}

# add_layer SRC FORMAT HISTORY TOP...: archive the entries TOP... of directory SRC
# (sorted by name, numeric owners, user.* xattrs with pax) and append it to demo-app.
add_layer() {
  local src=$1 format=$2 history=$3 layer=$work/layer.tar
  shift 3
  local flags=(--create --file "$layer" --directory "$src" --format="$format" --sort=name --numeric-owner)
  if [[ $format == pax ]]; then
    flags+=(--xattrs --xattrs-include='user.*' '--pax-option=delete=atime,delete=ctime')
  fi
  tar "${flags[@]}" "$@"
  umoci raw add-layer --image "$oci:demo-app" --history.created_by "$history" "$layer"
  rm -f "$layer"
}

# layer 2: the app directory
mkdir -p "$A"/{bin,data,conf/sub,tmp,"$long_dir"}
printf '#!/bin/sh\necho "ketch-demo ok"\n' >"$A/run.sh"
chmod 0755 "$A/run.sh"
head -c 5242880 /dev/urandom >"$A/data/blob.bin"
cp "$A/data/blob.bin" "$A/data/blob-copy.bin"
printf 'hello from ketch\n' >"$A/hello.txt"
ln "$A/hello.txt" "$A/hello-hardlink.txt"
ln -s data/blob.bin "$A/link-relative"
ln -s /opt/app/run.sh "$A/link-absolute"
mkfifo "$A/fifo"
mknod "$A/null" c 1 3
printf '#!/bin/sh\nid -u\n' >"$A/bin/suid-tool"
chmod 4755 "$A/bin/suid-tool"
chmod 1777 "$A/tmp"
printf 'sticky\n' >"$A/tmp/in-sticky-dir.txt"
printf 'owned by 1000\n' >"$A/owned-by-1000.txt"
chown 1000:1000 "$A/owned-by-1000.txt"
printf 'has an xattr\n' >"$A/xattr.txt"
setfattr -n user.ketch.demo -v layer2 "$A/xattr.txt"
printf 'long name ok\n' >"$A/$long_dir/$long_name"
: >"$A/empty"
printf 'nanoseconds\n' >"$A/timestamp-ns.txt"
printf 'obsolete\n' >"$A/obsolete.txt"
printf 'old=1\n' >"$A/conf/old.conf"
printf 'old=2\n' >"$A/conf/sub/deep.conf"
clamp "$R/opt"
add_layer "$R" pax "ketch build-test-images: add /opt/app" opt

# layer 3: changes on top of layer 2 and layer 1
rm "$A/obsolete.txt" "$R/etc/issue.net"
rm -rf "$A/conf" && mkdir "$A/conf" && printf 'new=1\n' >"$A/conf/new.conf"
dd if=/dev/urandom of="$A/data/blob.bin" bs=4096 count=16 seek=100 conv=notrunc status=none
printf 'changed in layer 3\n' >>"$A/$long_dir/$long_name"
clamp "$R/opt"
touch -d "@$epoch" "$R/etc"
S=$work/layer3 # staging tree of layer 3: changed entries, their parents, whiteouts
mkdir -p "$S/etc"
(cd "$R" && cp -a --parents opt/app/conf opt/app/data/blob.bin "opt/app/$long_dir/$long_name" "$S/")
: >"$S/opt/app/.wh.obsolete.txt"
: >"$S/etc/.wh.issue.net"
: >"$S/opt/app/conf/.wh..wh..opq"
# staged directories and whiteout files carry the metadata of the real tree
(cd "$S" && find . -type d) | while read -r d; do
  chmod --reference="$R/$d" "$S/$d"
  chown --reference="$R/$d" "$S/$d"
done
find "$S" -exec touch -h -d "@$epoch" {} +
add_layer "$S" gnu "ketch build-test-images: whiteouts, opaque dir, changed files" etc opt
umoci config --image "$oci:demo-app" --config.cmd /bin/sh --config.cmd /opt/app/run.sh \
  --config.workingdir /opt/app >/dev/null
umoci gc --layout "$oci"

# --- check: demo-app unpacks to $R ----------------------------------------------
# describe ROOT: one line per entry under ROOT/opt (sizes of directories left out,
# they depend on the filesystem), device numbers, user.* xattrs, file digests.
describe() {
  (
    cd "$1"
    find opt -type d -printf '%p %y %m %U:%G %n %T@\n'
    find opt ! -type d -printf '%p %y %m %U:%G %n %T@ %s %l\n'
    find opt -type c -exec stat -c '%n dev %t:%T' {} +
    getfattr -R -h -d -m '^user\.' --absolute-names opt 2>/dev/null
    find opt -type f -exec sha256sum {} +
    [[ -e etc/issue.net ]] && echo "etc/issue.net present" || echo "etc/issue.net deleted"
  ) | sort
}
umoci unpack --image "$oci:demo-app" "$work/check" >/dev/null
if ! diff -u <(describe "$R") <(describe "$work/check/rootfs") >"$work/check.diff"; then
  cat "$work/check.diff" >&2
  die "demo-app does not unpack to the intended tree (diff above: intended vs unpacked)"
fi
C=$work/check/rootfs/opt/app
checks=(
  "[[ \$(stat -c %.9Y '$C/timestamp-ns.txt') == 1612325106.123456789 ]]"
  "[[ '$C/hello.txt' -ef '$C/hello-hardlink.txt' ]]"
  "[[ \$(ls -A '$C/conf') == new.conf ]]"
  "[[ ! -e '$C/obsolete.txt' && ! -e '$work/check/rootfs/etc/issue.net' ]]"
  "[[ -e '$work/check/rootfs/etc/issue' ]]"
  "! cmp -s '$C/data/blob.bin' '$C/data/blob-copy.bin'"
  "[[ \$(getfattr -h --absolute-names --only-values -n user.ketch.demo '$C/xattr.txt') == layer2 ]]"
  "[[ -p '$C/fifo' && -c '$C/null' && -u '$C/bin/suid-tool' && -k '$C/tmp' ]]"
  "[[ \$(readlink '$C/link-relative') == data/blob.bin && \$(readlink '$C/link-absolute') == /opt/app/run.sh ]]"
)
for check in "${checks[@]}"; do
  eval "$check" || die "check failed on the unpacked demo-app: $check"
done
rm -rf "$work/app" "$work/check"

# --- publish --------------------------------------------------------------------
rm -rf "$out/oci"
mv "$oci" "$out/oci"
oci=$out/oci
for tag in demo-base demo-app; do
  skopeo inspect --raw "oci:$oci:$tag" | python3 -c '
import hashlib, json, sys
raw = sys.stdin.buffer.read()
layers = [layer["size"] for layer in json.loads(raw)["layers"]]
sizes = " + ".join("%.1f MiB" % (n / 2**20) for n in layers)
print("%s: %d layer%s, %.1f MiB compressed (%s), manifest sha256:%s" % (
    sys.argv[1], len(layers), "" if len(layers) == 1 else "s", sum(layers) / 2**20, sizes,
    hashlib.sha256(raw).hexdigest()))
' "$tag"
done
echo "built $oci in $((SECONDS - start))s ($(du -sh "$oci" | cut -f1) on disk)"
