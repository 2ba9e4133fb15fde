#!/usr/bin/env bash
# Makes `docker` usable: installs docker.io, docker-compose and debootstrap when missing (Debian, as root), and
# starts dockerd when none answers. Prints the pid of a dockerd it started to $1 (a file), so the caller can stop it.
set -euo pipefail
started_file="${1:-}"
missing=()
command -v dockerd >/dev/null || missing+=(docker.io)
command -v docker-compose >/dev/null || missing+=(docker-compose)
command -v debootstrap >/dev/null || missing+=(debootstrap)
if ((${#missing[@]})); then
  echo "installing ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null \
    || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null; }
fi
if docker info >/dev/null 2>&1; then
  exit 0
fi
echo "starting dockerd"
mkdir -p var/log
nohup dockerd >var/log/dockerd.log 2>&1 &
pid=$!
for _ in $(seq 60); do
  if docker info >/dev/null 2>&1; then
    [[ -n "$started_file" ]] && echo "$pid" >"$started_file"
    exit 0
  fi
  sleep 1
done
echo "dockerd did not come up within 60 s; see var/log/dockerd.log" >&2
exit 1
