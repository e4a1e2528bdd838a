#!/usr/bin/env bash
# Debian packages the tests need: a real Prometheus server and promtool (deploy/prometheus is checked with them).
# Idempotent: does nothing when they are already on PATH. Needs root or sudo the first time.
set -euo pipefail
if command -v prometheus >/dev/null && command -v promtool >/dev/null; then
  exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends prometheus >/dev/null
command -v prometheus >/dev/null && command -v promtool >/dev/null
