#!/usr/bin/env bash
# Set-up of tests/lab.rs: Debian's Chromium, for the headless-browser check
# of the soak's HTML report. Installs it with apt when it is missing, then
# prints its path. Needs root (as the tests do) when it installs.
set -euo pipefail
if ! command -v chromium >/dev/null; then
  apt-get update -q >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >&2
fi
command -v chromium
