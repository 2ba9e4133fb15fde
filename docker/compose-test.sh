#!/usr/bin/env bash
# make compose-test: Docker installed and running (started here if it was not, and stopped again), the image built,
# then tests/compose against a real docker-compose stack.
set -euo pipefail
cd "$(dirname "$0")/.."
pidfile="$(mktemp)"
cleanup() {
  if [[ -s "$pidfile" ]]; then
    echo "stopping the dockerd this test started"
    kill "$(cat "$pidfile")" 2>/dev/null || true
  fi
  rm -f "$pidfile"
}
trap cleanup EXIT
started=$(date +%s)
docker/ensure-docker.sh "$pidfile"
PROMETHEUS_IMAGE="${FUNNEL_PROMETHEUS_IMAGE:-funnel-prometheus:latest}" docker/build-image.sh "${FUNNEL_IMAGE:-funnel:latest}"
FUNNEL_COMPOSE_TEST=1 .venv/bin/python -m pytest -q -p no:cacheprovider -s tests/compose
echo "compose-test took $(($(date +%s) - started)) s"
