#!/usr/bin/env bash
# Placeholder demo: builds Ketch's test images (if missing) and shows what they are.
# The real demo (convert, push, mount lazily, run) replaces this script.
#
#   scripts/demo.sh          (or: make demo)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

images=.cache/images
if [[ ! -f $images/oci/index.json ]]; then
  scripts/build-test-images.sh "$images"
fi
oci=$images/oci
for tag in demo-base demo-app; do
  skopeo inspect --format "$tag: {{len .Layers}} layers, {{.Digest}}, {{.Os}}/{{.Architecture}}" "oci:$oci:$tag"
done
echo "OCI layout: $oci ($(du -sh "$oci" | cut -f1)); try: skopeo inspect --config oci:$oci:demo-app"
