#!/usr/bin/env bash
# make demo: Ketch end to end on this machine, ending with one table that starts the
# corpus image py2 on a cold node the OCI way and the Ketch way, measured in this run
# (docs/demo.md shows a whole run).
#
#   scripts/demo.sh [--prebuilt]
#
#   --prebuilt   build nothing and install nothing: use the .venv and the images under
#                .cache that are already there (the integration test runs it so);
#                a missing image is an error, not a build.
#
# Environment: KETCH_DEMO_CACHE (default .cache) holds the images (images/, corpus/);
# KETCH_DEMO_WORK (default $KETCH_DEMO_CACHE/demo) the demo's outputs, emptied first.
# Build and install output goes to $KETCH_DEMO_WORK/demo.log, never to the screen.
#
# Exit codes: 0 done; 1 a step failed (the end of the log is shown); 2 a prerequisite is
# missing (one line says which and how to get it, before anything long starts).
#
# Each step is one function; STEPS lists them in order.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

cache=${KETCH_DEMO_CACHE:-.cache}
work=${KETCH_DEMO_WORK:-$cache/demo}
log=$work/demo.log
images=$cache/images
corpus=$cache/corpus
ketch=.venv/bin/ketch
python=.venv/bin/python
tag=demo-app
prebuilt=false
TOOLS=(skopeo umoci runc docker-registry fusermount3 containerd ctr)

# After preflight and a fresh work directory, in order:
STEPS=(
  install_deps
  source_image
  convert
  inspect_check
  unpack_compare
  skopeo_view
  corpus_image
  containerd_run
  side_by_side
)

# -- output -------------------------------------------------------------------------------

step() { # a step's title, bold on a terminal
  if [[ -t 1 ]]; then printf '\n\033[1m== %s\033[0m\n' "$*"; else printf '\n== %s\n' "$*"; fi
}

missing() { # one line: what is missing and how to get it
  echo "demo: missing $*" >&2
  exit 2
}

# long LABEL CMD...: run CMD with its output in the log, showing the time it has taken
# meanwhile; on failure, the end of the log. CMD runs in a session of its own, stopped
# whole if the demo is interrupted.
long() {
  local label=$1 started=$SECONDS pid rc=0 shown=0
  shift
  printf '\n== %s: %s\n' "$label" "$*" >>"$log"
  setsid "$@" >>"$log" 2>&1 &
  pid=$!
  trap 'kill -TERM -- "-$pid" 2>/dev/null; exit 130' INT TERM
  while kill -0 "$pid" 2>/dev/null; do
    local elapsed=$((SECONDS - started))
    if [[ -t 1 ]]; then
      printf '\r  %s ... %ds (output: %s)' "$label" "$elapsed" "$log"
    elif ((elapsed >= shown + 30)); then
      shown=$elapsed
      echo "  $label ... ${elapsed}s"
    fi
    sleep 1
  done
  wait "$pid" || rc=$?
  trap - INT TERM
  [[ -t 1 ]] && printf '\r\033[K'
  if ((rc != 0)); then
    echo "demo: $label failed (exit $rc); the end of $log:" >&2
    tail -n 20 "$log" >&2
    exit 1
  fi
  echo "  $label: done in $((SECONDS - started))s"
}

# -- steps --------------------------------------------------------------------------------

preflight() { # what no install can fix, checked before anything long starts
  ((EUID == 0)) ||
    missing "root: the demo mounts FUSE and overlayfs, runs runc and drops the page cache; run it as root (sudo make demo)"
  [[ -c /dev/fuse ]] ||
    missing "/dev/fuse: no FUSE device here; on a host or VM: modprobe fuse; in a container: start it with --device /dev/fuse --cap-add SYS_ADMIN"
  local caps
  caps=$(awk '$1 == "CapEff:" {print $2}' /proc/self/status)
  (((16#$caps >> 21) & 1)) ||
    missing "CAP_SYS_ADMIN: needed to mount FUSE and overlayfs; start the container with --cap-add SYS_ADMIN (or --privileged)"
  if $prebuilt; then
    [[ -f $images/oci/index.json ]] || missing "$images/oci (--prebuilt builds nothing): run make test-images"
    [[ -f $corpus/oci/index.json ]] || missing "$corpus/oci (--prebuilt builds nothing): run make corpus"
    [[ -x $ketch ]] || missing "$ketch (--prebuilt installs nothing): run make install"
  fi
}

fresh_work() {
  rm -rf "$work"
  mkdir -p "$work"
  : >"$log"
  echo "checked: root, /dev/fuse, CAP_SYS_ADMIN; build and install output goes to $log"
}

install_deps() {
  if ! $prebuilt; then
    long "make install (Debian packages, .venv)" make --no-print-directory install
  fi
  local tool
  for tool in "${TOOLS[@]}"; do
    command -v "$tool" >/dev/null || missing "$tool: run scripts/install-system-deps.sh"
  done
  echo "tools: ${TOOLS[*]}, $ketch"
}

source_image() {
  step "source image: $images/oci:$tag (debootstrap + umoci + GNU tar layers)"
  if [[ ! -f $images/oci/index.json ]]; then
    long "building the test images" make --no-print-directory test-images CACHE="$cache"
  fi
  skopeo inspect --format '{{len .Layers}} layers, {{.Digest}}' "oci:$images/oci:$tag"
}

convert() {
  step "ketch convert oci:$images/oci:$tag oci:$work/ketch:$tag"
  $ketch convert "oci:$images/oci:$tag" "oci:$work/ketch:$tag"
  local stored
  stored=$($python -m bench.side_by_side compare "oci:$images/oci:$tag" "oci:$work/ketch:$tag")
  echo "$tag, $stored"
}

inspect_check() {
  step "ketch inspect / ketch check"
  $ketch inspect "oci:$work/ketch:$tag"
  $ketch inspect "oci:$work/ketch:$tag" /opt/app/data/blob.bin
  $ketch check "oci:$work/ketch:$tag"
}

unpack_compare() {
  step "ketch unpack, and compare with umoci unpack of the source image"
  $ketch unpack "oci:$work/ketch:$tag" "$work/ketch-tree"
  umoci unpack --image "$images/oci:$tag" "$work/umoci-bundle" >>"$log" 2>&1
  $python tests/treecmp.py "$work/umoci-bundle/rootfs" "$work/ketch-tree"
}

skopeo_view() {
  step "skopeo sees a normal OCI image"
  skopeo inspect --format 'layers: {{len .Layers}}, cmd from config kept' "oci:$work/ketch:$tag"
  skopeo inspect --config "oci:$work/ketch:$tag" |
    $python -c 'import json,sys; c=json.load(sys.stdin)["config"]; print("  Cmd:", c.get("Cmd"), " WorkingDir:", c.get("WorkingDir"))'
}

corpus_image() {
  step "corpus image: $corpus/oci:py2 (python3 + numpy on Debian)"
  if [[ ! -f $corpus/oci/index.json ]]; then
    long "building the corpus images" make --no-print-directory corpus CACHE="$cache"
  fi
  skopeo inspect --format '{{len .Layers}} layers, {{.Digest}}' "oci:$corpus/oci:py2"
}

containerd_run() {
  step "py2 through containerd: ketch snapshotter + ketch containerd pull + ctr run --snapshotter ketch"
  $ketch convert "oci:$corpus/oci:py2" "oci:$work/ketch:py2" --json >/dev/null
  scripts/demo-containerd.sh "oci:$work/ketch:py2"
}

side_by_side() {
  step "py2 started on a cold node: OCI (skopeo + umoci + runc) against Ketch (ketch run)"
  $python -m bench.side_by_side table --work "$work/side-by-side" --corpus "$corpus/oci" \
    --json "$work/side-by-side.json"
}

# -- main ---------------------------------------------------------------------------------

main() {
  local arg
  for arg in "$@"; do
    case $arg in
      --prebuilt) prebuilt=true ;;
      *) echo "usage: scripts/demo.sh [--prebuilt]" >&2; exit 2 ;;
    esac
  done
  local started=$SECONDS name
  preflight
  fresh_work
  for name in "${STEPS[@]}"; do
    "$name"
  done
  echo
  echo "demo done in $((SECONDS - started))s; outputs in $work, build output in $log"
}

main "$@"
