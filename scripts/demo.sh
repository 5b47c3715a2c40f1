#!/usr/bin/env bash
# The main job end to end, on local defaults (make demo):
#   1. build a real Debian-based OCI image with the project's own tooling
#      (debootstrap + umoci + tar layers, scripts/build-test-images.sh),
#   2. convert it to a Ketch image (chunked, deduplicated, zstd, Merkle bootstrap),
#   3. print its inspect summary and verify every byte (ketch check),
#   4. unpack it and show that the tree equals `umoci unpack` of the source image,
#   5. run a corpus container (py2: python3 + numpy) lazily from a FUSE mount, and print
#      the bytes it fetched against the image's size,
#   7. run it through containerd: `ketch snapshotter` as containerd's proxy plugin,
#      `ketch containerd pull`, `ctr run --snapshotter ketch` (scripts/demo-containerd.sh).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

ketch=.venv/bin/ketch
images=.cache/images
work=.cache/demo
tag=demo-app

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "1. source image: $images/oci:$tag (built with debootstrap + umoci if missing)"
if [[ ! -f $images/oci/index.json ]]; then
  scripts/build-test-images.sh "$images"
fi
skopeo inspect --format '{{len .Layers}} layers, {{.Digest}}' "oci:$images/oci:$tag"

rm -rf "$work"
mkdir -p "$work"

step "2. ketch convert oci:$images/oci:$tag oci:$work/ketch:$tag"
$ketch convert "oci:$images/oci:$tag" "oci:$work/ketch:$tag"

step "3. ketch inspect / ketch check"
$ketch inspect "oci:$work/ketch:$tag"
$ketch inspect "oci:$work/ketch:$tag" /opt/app/data/blob.bin
$ketch check "oci:$work/ketch:$tag"

step "4. ketch unpack, and compare with umoci unpack of the source image"
$ketch unpack "oci:$work/ketch:$tag" "$work/ketch-tree"
umoci unpack --image "$images/oci:$tag" "$work/umoci-bundle" >/dev/null
.venv/bin/python tests/treecmp.py "$work/umoci-bundle/rootfs" "$work/ketch-tree"

step "5. skopeo sees a normal OCI image"
skopeo inspect --format 'layers: {{len .Layers}}, cmd from config kept' "oci:$work/ketch:$tag"
skopeo inspect --config "oci:$work/ketch:$tag" | .venv/bin/python -c 'import json,sys; c=json.load(sys.stdin)["config"]; print("  Cmd:", c.get("Cmd"), " WorkingDir:", c.get("WorkingDir"))'

step "6. a corpus container, lazily: ketch mount + ketch run (runc on overlayfs over FUSE)"
make --no-print-directory corpus >/dev/null
corpus=.cache/corpus/oci
$ketch convert "oci:$corpus:py2" "oci:$work/ketch:py2" --json >/dev/null
mkdir -p "$work/mnt"
$ketch mount "oci:$work/ketch:py2" "$work/mnt" --cache-dir "$work/cache"
trap '$ketch umount "$work/mnt" >/dev/null 2>&1 || true' EXIT
echo "container output:"
$ketch run "oci:$work/ketch:py2" --cache-dir "$work/cache"
$ketch status "$work/mnt" --files 8
fetched=$($ketch status "$work/mnt" --json | .venv/bin/python -c 'import json,sys; print(int(json.load(sys.stdin)["metrics"]["ketch_backend_read_bytes_total"]))')
stored=$($ketch inspect "oci:$work/ketch:py2" --json | .venv/bin/python -c 'import json,sys; d=json.load(sys.stdin); print(d["stored_bytes"], d["bytes"])')
read -r stored_bytes file_bytes <<<"$stored"
echo "py2 started after fetching $(numfmt --to=iec "$fetched") of $(numfmt --to=iec "$stored_bytes") stored ($(numfmt --to=iec "$file_bytes") of files): $((100 * fetched / stored_bytes))%"
$ketch umount "$work/mnt"
trap - EXIT

oci_bytes=$(du -sb "$images/oci/blobs" | cut -f1)
echo
echo "demo done: source layout $(numfmt --to=iec "$oci_bytes"), Ketch layout $(du -sh "$work/ketch" | cut -f1); outputs in $work"

step "7. the same image through containerd: ketch snapshotter + ketch containerd pull + ctr run"
scripts/demo-containerd.sh "oci:$work/ketch:py2"
