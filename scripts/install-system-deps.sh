#!/usr/bin/env bash
# Installs the Debian packages Ketch needs (build, tests, demo) when any is missing.
#
#   scripts/install-system-deps.sh
#
# Idempotent: prints nothing and touches nothing when every package is installed.
# Needs root (or sudo) only when something has to be installed.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive

packages=(
  skopeo umoci runc docker-registry debootstrap attr   # OCI images, registry, rootfs building
  tinyproxy                                            # HTTP proxy for the proxy tests
  fuse3 libfuse3-dev pkg-config                        # FUSE daemon
  zstd lz4                                             # codec command-line tools
  containerd                                           # containerd snapshotter tests (ctr, CRI)
  python3-venv python3-dev gcc make git ca-certificates
)

installed() { # true when package $1 is installed (not merely known or removed)
  [[ $(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null) == installed ]]
}

missing=()
for pkg in "${packages[@]}"; do
  installed "$pkg" || missing+=("$pkg")
done
((${#missing[@]})) || exit 0

sudo=()
if ((EUID != 0)); then
  command -v sudo >/dev/null || { echo "install-system-deps: need root to install: ${missing[*]}" >&2; exit 1; }
  sudo=(sudo --preserve-env=DEBIAN_FRONTEND)
fi
echo "install-system-deps: installing ${missing[*]}"
"${sudo[@]}" apt-get update -qq
"${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
