#!/usr/bin/env bash
# The browser test drives Debian's Chromium. Install it where we can (root with apt-get); where we
# cannot, the browser test skips itself and says why. Never fails the build.
command -v chromium >/dev/null 2>&1 && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "Installing Debian's chromium for the browser test (about 30 s) ..."
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null 2>&1 \
    || echo "Could not install chromium; the browser test will be skipped."
fi
exit 0
