#!/usr/bin/env bash
# Makes a local Debian bookworm base image (minbase, via debootstrap) for hosts that reach no image registry.
# usage: docker/make-base.sh IMAGE_TAG   (needs root and debootstrap; takes about half a minute)
set -euo pipefail
tag="${1:?usage: $0 IMAGE_TAG}"
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
rootfs="$(mktemp -d)"
trap 'rm -rf "$rootfs"' EXIT
debootstrap --variant=minbase bookworm "$rootfs" "$mirror" >/dev/null
rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
tar -C "$rootfs" -c . | docker import --change 'CMD ["/bin/bash"]' - "$tag" >/dev/null
echo "made base image $tag"
