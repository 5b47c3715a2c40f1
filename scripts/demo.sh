#!/usr/bin/env bash
# The main job end to end, on local defaults (make demo):
#   1. build a real Debian-based OCI image with the project's own tooling
#      (debootstrap + umoci + tar layers, scripts/build-test-images.sh),
#   2. convert it to a Ketch image (chunked, deduplicated, zstd, Merkle bootstrap),
#   3. print its inspect summary and verify every byte (ketch check),
#   4. unpack it and show that the tree equals `umoci unpack` of the source image.
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

oci_bytes=$(du -sb "$images/oci/blobs" | cut -f1)
echo
echo "demo done: source layout $(numfmt --to=iec "$oci_bytes"), Ketch layout $(du -sh "$work/ketch" | cut -f1); outputs in $work"
