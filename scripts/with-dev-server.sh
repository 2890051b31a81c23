#!/usr/bin/env bash
# Runs "$@" while a `custos dev` holds the default ports 127.0.0.1:8443 and
# 127.0.0.1:9464, as when a developer has `make run` going in another
# terminal: no test may depend on those ports being free. If something
# already listens on them (a real `make run`), "$@" runs beside it as is.
set -euo pipefail

busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

if busy 8443 || busy 9464; then
  echo "with-dev-server: 127.0.0.1:8443 or :9464 is already in use; testing beside it"
  exec "$@"
fi

dir=$(mktemp -d)
pid=
cleanup() {
  if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
  rm -rf "$dir"
}
trap cleanup EXIT

${GO:-go} build -o "$dir/custos" ./cmd/custos # the toolchain make test runs with (GO may be several words)
"$dir/custos" dev --dir "$dir/dev" >"$dir/dev.log" 2>&1 &
pid=$!
for _ in $(seq 300); do
  if busy 8443 && busy 9464; then break; fi
  if ! kill -0 "$pid" 2>/dev/null; then
    echo "with-dev-server: custos dev exited before listening:" >&2
    cat "$dir/dev.log" >&2
    exit 1
  fi
  sleep 0.1
done
if ! { busy 8443 && busy 9464; }; then
  echo "with-dev-server: custos dev did not listen on 8443 and 9464 within 30s:" >&2
  cat "$dir/dev.log" >&2
  exit 1
fi
echo "with-dev-server: custos dev (pid $pid) holds 127.0.0.1:8443 and :9464 while the tests run"
"$@"
