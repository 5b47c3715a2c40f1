#!/usr/bin/env bash
# make demo, step 7: a Ketch image run through containerd with stock ctr (docs/containerd.md).
#
#   scripts/demo-containerd.sh KETCH_LAYOUT_REF      e.g. oci:.cache/demo/ketch:py2
#
# Starts, under a temporary directory, a loopback registry, `ketch snapshotter` and a
# containerd of its own (never the system one: own root, state and socket) with the
# snapshotter as its proxy plugin `ketch`; pushes the Ketch image to the registry, pulls
# it into containerd with `ketch containerd pull` (no layer download) and runs it with
# `ctr run --snapshotter ketch`. Everything is stopped and removed at the end.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source_ref=$1
ketch=.venv/bin/ketch
work=$(mktemp -d /tmp/ketch-demo-containerd.XXXXXX)
pids=()
cleanup() {
  if [[ -S $work/containerd.sock ]]; then
    ctr --address "$work/containerd.sock" images rm --sync "${image:-none}" >/dev/null 2>&1 || true
  fi
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
    kill "${pids[i]}" 2>/dev/null || true
    wait "${pids[i]}" 2>/dev/null || true
  done
  grep -o " $work/[^ ]*" /proc/self/mountinfo | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

wait_for() { # until the unix socket $1 exists, at most 30 s
  for _ in $(seq 300); do [[ -S $1 ]] && return 0; sleep 0.1; done
  echo "demo: $1 did not appear" >&2
  return 1
}

.venv/bin/python scripts/registry.py --dir "$work/registry" >"$work/registry.json" &
pids+=($!)
for _ in $(seq 300); do [[ -s $work/registry.json ]] && break; sleep 0.1; done
host=$(.venv/bin/python -c 'import json,sys; print(json.load(open(sys.argv[1]))["host"])' "$work/registry.json")
image=$host/demo:ketch
skopeo copy --quiet "$source_ref" "docker://$image" --dest-tls-verify=false

printf '[cache]\ndir = "%s"\n' "$work/cache" >"$work/ketch.toml"
KETCH_CONFIG=$work/ketch.toml $ketch snapshotter --address "$work/ketch.sock" \
  --root "$work/snapshotter" 2>"$work/snapshotter.log" &
pids+=($!)
wait_for "$work/ketch.sock"
cat >"$work/containerd.toml" <<EOF
version = 2
root = "$work/root"
state = "$work/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$work/containerd.sock"
[ttrpc]
  address = "$work/containerd.sock.ttrpc"
[proxy_plugins.ketch]
  type = "snapshot"
  address = "$work/ketch.sock"
EOF
containerd --config "$work/containerd.toml" 2>"$work/containerd.log" &
pids+=($!)
wait_for "$work/containerd.sock"

echo "\$ ketch containerd pull $image"
KETCH_CONFIG=$work/ketch.toml $ketch containerd pull "$image" --address "$work/containerd.sock"
echo "\$ ctr snapshots --snapshotter ketch ls"
ctr --address "$work/containerd.sock" snapshots --snapshotter ketch ls
echo "\$ ctr run --rm --snapshotter ketch $image demo1"
ctr --address "$work/containerd.sock" run --rm --snapshotter ketch "$image" demo1
mount=$(grep -o " $work/snapshotter/[^ ]* " /proc/self/mountinfo | head -1 | tr -d ' ')
fetched=$($ketch status "$mount" --json | .venv/bin/python -c 'import json,sys; print(int(json.load(sys.stdin)["metrics"]["ketch_backend_read_bytes_total"]))')
echo "the container ran after fetching $(numfmt --to=iec "$fetched") through the snapshotter's FUSE mount"
