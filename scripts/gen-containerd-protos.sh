#!/usr/bin/env bash
# Regenerates the Python protobuf modules (_pb2.py, _pb2.pyi) from the .proto files in
# src/ketch/snapshot/protos (see the README there for their origin and versions).
#
#   scripts/gen-containerd-protos.sh [PYTHON]      (default: .venv/bin/python)
#
# The .proto files import each other by their Go paths: protoc runs on those same paths,
# so the generated descriptors carry the upstream file and package names
# (containerd.services.snapshots.v1, runtime.v1); the generated imports are then pointed
# at ketch.snapshot.protos.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
python=$(realpath -s "${1:-$root/.venv/bin/python}")
protos=$root/src/ketch/snapshot/protos
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# directory here -> the Go import path it stands for
declare -A go_path=(
  [containerd]=github.com/containerd/containerd/api
  [cri]=k8s.io/cri-api/pkg/apis/runtime
  [gogoproto]=github.com/gogo/protobuf/gogoproto
)

files=()
for dir in "${!go_path[@]}"; do
  mkdir -p "$work/in/$(dirname "${go_path[$dir]}")"
  ln -s "$protos/$dir" "$work/in/${go_path[$dir]}"
  while IFS= read -r f; do
    files+=("${go_path[$dir]}/$f")
  done < <(cd "$protos/$dir" && find . -name '*.proto' | sed 's|^\./||' | sort)
done
mkdir -p "$work/out"
(cd "$work/in" && "$python" -m grpc_tools.protoc -I . --python_out="$work/out" \
  --pyi_out="$work/out" "${files[@]}")

# protoc names Python modules after the path, dots and dashes as directories/underscores.
module_dir() { echo "$1" | sed -e 's|\.|/|g' -e 's|-|_|g'; }
module_name() { echo "$1" | sed -e 's|/|.|g' -e 's|\.$||'; }
find "$protos" \( -name '*_pb2.py' -o -name '*_pb2.pyi' -o -name '__init__.py' \) -delete
sed_args=()
for dir in "${!go_path[@]}"; do
  sed_args+=(-e "s/^from $(module_name "$(module_dir "${go_path[$dir]}")" | sed 's/\./\\./g')\\./from ketch.snapshot.protos.$dir./")
  sed_args+=(-e "s/^from $(module_name "$(module_dir "${go_path[$dir]}")" | sed 's/\./\\./g') import/from ketch.snapshot.protos.$dir import/")
done
for dir in "${!go_path[@]}"; do
  gen=$work/out/$(module_dir "${go_path[$dir]}")
  (cd "$gen" && find . -name '*_pb2.py*') | while IFS= read -r f; do
    mkdir -p "$(dirname "$protos/$dir/$f")"
    sed "${sed_args[@]}" "$gen/$f" >"$protos/$dir/$f"
  done
done
# Packages for the generated modules: every directory from protos/ down.
find "$protos" -type d -exec touch {}/__init__.py \;
