#!/usr/bin/env bash
# Installs the system packages the tests need, when missing: PostgreSQL server
# binaries (tests start a throwaway server from /usr/lib/postgresql/*/bin),
# SoftHSM2 (the PKCS#11 root is tested against it), a C compiler (go test
# -race and the PKCS#11 root need cgo), Node.js and npm, and Debian's
# python3-grpcio and python3-grpc-tools (the polyglot examples). Idempotent; quiet when
# everything is present. Needs root (or sudo) only when something is missing.
set -euo pipefail

need=()
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || need+=(postgresql)
{ compgen -G '/usr/lib/softhsm/libsofthsm2.so' >/dev/null || compgen -G '/usr/lib/*/softhsm/libsofthsm2.so' >/dev/null; } || need+=(softhsm2)
command -v softhsm2-util >/dev/null || need+=(softhsm2)
# pgrep: the PostgreSQL tests check that no server process is left behind.
command -v pgrep >/dev/null || need+=(procps)
# cgo: without a C compiler Go turns it off, and go test -race refuses to
# run. The compiler Go uses (go env CC) must find the C library's headers.
cc=$(${GO:-go} env CC 2>/dev/null || echo gcc) # GO may be several words
echo '#include <stdlib.h>' | $cc -x c -E - >/dev/null 2>&1 || need+=(gcc libc6-dev)
# The polyglot examples: Node.js with npm, and Debian's Python gRPC.
command -v node >/dev/null || need+=(nodejs)
command -v npm >/dev/null || need+=(npm)
/usr/bin/python3 -c 'import grpc, grpc_tools' 2>/dev/null || need+=(python3-grpcio python3-grpc-tools)

if [ ${#need[@]} -eq 0 ]; then
  exit 0
fi
mapfile -t need < <(printf '%s\n' "${need[@]}" | sort -u)
echo "test-deps: installing ${need[*]}" >&2
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
# sudo resets the environment: the variable goes through env. A freshly
# booted machine's automatic updates may hold apt's lock for a while.
apt=($sudo env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 -o Acquire::Retries=3)
# apt-get update takes the lists' lock, for which DPkg::Lock::Timeout does
# not wait: try again for up to 10 minutes.
for i in $(seq 60); do
  "${apt[@]}" update -qq && break
  [ "$i" -lt 60 ] || exit 1
  echo "test-deps: apt-get update failed (the lists' lock held by automatic updates?); trying again in 10 s" >&2
  sleep 10
done
"${apt[@]}" install -y -qq --no-install-recommends "${need[@]}" >/dev/null
