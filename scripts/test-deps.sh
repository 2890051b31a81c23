#!/usr/bin/env bash
# Installs the system packages the tests need, when missing: PostgreSQL server
# binaries (tests start a throwaway server from /usr/lib/postgresql/*/bin) and
# SoftHSM2 (the PKCS#11 root is tested against it). Idempotent; quiet when
# everything is present. Needs root (or sudo) only when something is missing.
set -euo pipefail

need=()
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || need+=(postgresql)
{ compgen -G '/usr/lib/softhsm/libsofthsm2.so' >/dev/null || compgen -G '/usr/lib/*/softhsm/libsofthsm2.so' >/dev/null; } || need+=(softhsm2)
command -v softhsm2-util >/dev/null || need+=(softhsm2)

if [ ${#need[@]} -eq 0 ]; then
  exit 0
fi
mapfile -t need < <(printf '%s\n' "${need[@]}" | sort -u)
echo "test-deps: installing ${need[*]}" >&2
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
