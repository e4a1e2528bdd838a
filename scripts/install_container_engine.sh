#!/usr/bin/env bash
# A container engine from Debian: podman (with runc, CNI networking, slirp4netns, and catatonit for the pause
# container of `podman kube play` pods) to build and run the images,
# and debootstrap to make a stand-in base image where no registry can be reached (tools/containers/). Idempotent:
# does nothing when podman, runc, catatonit and debootstrap are there. Needs root or sudo the first time.
set -euo pipefail
present() {
  command -v podman >/dev/null && command -v runc >/dev/null && command -v debootstrap >/dev/null &&
    command -v catatonit >/dev/null
}
if present; then
  exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends \
  podman buildah runc catatonit containernetworking-plugins slirp4netns uidmap fuse-overlayfs debootstrap >/dev/null
present
