#!/usr/bin/env bash
# Builds the Funnel image. The base is BASE_IMAGE when it is present or can be pulled; otherwise (no registry
# reachable) a local Debian bookworm base made with debootstrap. The machine's extra CA certificates are trusted
# inside the build (pip behind a TLS-intercepting proxy).
# With PROMETHEUS_IMAGE set, also builds the compose stack's Prometheus image (docker/prometheus.Dockerfile).
# usage: docker/build-image.sh IMAGE_TAG
set -euo pipefail
cd "$(dirname "$0")/.."
image="${1:?usage: $0 IMAGE_TAG}"
base="${BASE_IMAGE:-python:3.11-slim-bookworm}"
local_base="${LOCAL_BASE_IMAGE:-funnel-base:bookworm}"
if ! docker image inspect "$base" >/dev/null 2>&1 && ! timeout 60 docker pull -q "$base" >/dev/null 2>&1; then
  echo "no registry serves $base: using the local base $local_base"
  base="$local_base"
  docker image inspect "$base" >/dev/null 2>&1 || docker/make-base.sh "$base"
fi
rm -f docker/certs/*.crt
for cert in /usr/local/share/ca-certificates/*.crt; do
  [[ -e "$cert" ]] && cp "$cert" docker/certs/
done
started=$(date +%s)
docker build -q -f docker/Dockerfile --build-arg BASE_IMAGE="$base" -t "$image" . >/dev/null
echo "built $image on $base in $(($(date +%s) - started)) s: $(docker image inspect -f '{{.Size}}' "$image" | awk '{printf "%.2f GB", $1 / 1e9}')"
if [[ -n "${PROMETHEUS_IMAGE:-}" ]]; then
  started=$(date +%s)
  docker build -q -f docker/prometheus.Dockerfile --build-arg BASE_IMAGE="$base" -t "$PROMETHEUS_IMAGE" . >/dev/null
  echo "built $PROMETHEUS_IMAGE on $base in $(($(date +%s) - started)) s"
fi
