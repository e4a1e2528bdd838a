#!/usr/bin/env bash
# Debian packages the tests need: a real Prometheus server and promtool (deploy/prometheus is checked with them),
# the Noto Color Emoji font (the colour emoji dataset, training/emoji.py, is rendered from it), a real browser for the
# latent explorer's tests (chromium and chromium-driver), and a container engine for the image tests
# (scripts/install_container_engine.sh).
# Idempotent: does nothing when they are already there. Needs root or sudo the first time.
set -euo pipefail
"$(dirname "$0")/install_container_engine.sh"
EMOJI_FONT=/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf
present() {
  command -v prometheus >/dev/null && command -v promtool >/dev/null && [ -f "$EMOJI_FONT" ] &&
    command -v chromium >/dev/null && command -v chromedriver >/dev/null
}
if present; then
  exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends prometheus fonts-noto-color-emoji chromium chromium-driver fonts-dejavu-core >/dev/null
present
