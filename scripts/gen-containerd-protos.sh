#!/usr/bin/env bash
# Regenerates the Python protobuf modules (_pb2.py, _pb2.pyi) of containerd's API from the
# .proto files in src/ketch/snapshot/protos (see the README there for their origin).
#
#   scripts/gen-containerd-protos.sh [PYTHON]      (default: .venv/bin/python)
#
# The .proto files import each other by containerd's Go paths
# (github.com/containerd/containerd/api/...): protoc runs on those same paths, so the
# generated descriptors carry containerd's own file and package names; the generated
# imports are then pointed at ketch.snapshot.protos.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
python=$(realpath -s "${1:-$root/.venv/bin/python}")
protos=$root/src/ketch/snapshot/protos
go=github.com/containerd/containerd/api
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

mkdir -p "$work/in/github.com/containerd/containerd" "$work/out"
ln -s "$protos/containerd" "$work/in/$go"
mapfile -t files < <(cd "$protos/containerd" && find . -name '*.proto' | sed 's|^\./||' | sort)
(cd "$work/in" && "$python" -m grpc_tools.protoc -I . --python_out="$work/out" \
  --pyi_out="$work/out" "${files[@]/#/$go/}")

find "$protos/containerd" \( -name '*_pb2.py' -o -name '*_pb2.pyi' -o -name '__init__.py' \) -delete
for f in "${files[@]}"; do
  for ext in py pyi; do
    gen=$work/out/github/com/containerd/containerd/api/${f%.proto}_pb2.$ext
    sed -e "s/^from github\.com\.containerd\.containerd\.api\./from ketch.snapshot.protos.containerd./" \
      "$gen" >"$protos/containerd/${f%.proto}_pb2.$ext"
  done
done
# Packages for the generated modules: every directory from protos/ down.
find "$protos" -type d -exec touch {}/__init__.py \;
