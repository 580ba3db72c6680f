#!/usr/bin/env bash
# The browser test drives Debian's Chromium, the cluster test runs Debian's nginx and the deployment
# test validates docker-compose.yml with Debian's docker-compose. Install them
# where we can (root with apt-get); where we cannot, those tests skip themselves and say why —
# except under CI (CI=true), where a package that cannot be installed fails the build here, and a
# skipped test fails the run (tests/conftest.py). Usage: ensure-packages.sh [package ...]   (default: all three)
packages=("${@:-chromium nginx docker-compose}")
missing=()
for package in ${packages[@]}; do
  command -v "$package" >/dev/null 2>&1 || [ -x "/usr/sbin/$package" ] || missing+=("$package")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "Installing Debian packages for the tests: ${missing[*]} (about 30 s) ..."
  if ! (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}") >/dev/null 2>&1; then
    echo "Could not install ${missing[*]}; the tests that need them will be skipped."
    case "${CI:-}" in 1|true|TRUE|yes) echo "CI=true runs every test: failing here." >&2; exit 1 ;; esac
  fi
  # Debian starts nginx as a service on port 80 when it installs it; ours runs on its own ports.
  if [[ " ${missing[*]} " == *" nginx "* ]] && command -v nginx >/dev/null 2>&1; then
    (service nginx stop || nginx -s stop) >/dev/null 2>&1 || true
  fi
elif [[ "${CI:-}" =~ ^(1|true|TRUE|yes)$ ]]; then
  echo "Missing ${missing[*]} and no apt-get as root to install them; CI=true runs every test." >&2
  exit 1
fi
exit 0
