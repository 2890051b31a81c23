#!/usr/bin/env bash
# Calls every Custos RPC once with grpcurl against a running `custos dev`
# (make run), and fails on the first call that does not do what it should.
# Usage: scripts/grpcurl-tour.sh [ADDR] [DEV_DIR]   (defaults 127.0.0.1:8443 .custos-dev)
# Needs grpcurl on PATH or in .tools/bin (make grpcurl) and python3 for JSON.
set -euo pipefail

addr=${1:-127.0.0.1:8443}
dir=${2:-.custos-dev}
grpcurl=$(command -v grpcurl || echo .tools/bin/grpcurl)
t=tour-$RANDOM$RANDOM # a fresh tenant per run

call() { # call METHOD JSON -> prints the response
  "$grpcurl" -max-time 60 -cacert "$dir/ca.pem" -cert "$dir/client.pem" -key "$dir/client-key.pem" \
    -d "$2" "$addr" "custos.v1.$1"
}
field() { python3 -c "import json,sys; d=json.load(sys.stdin); print(eval('d'+sys.argv[1]))" "$1"; }
b64() { printf %s "$1" | base64 -w0; }
ok() { printf '  %-40s ok\n' "$1"; }
# has PATTERN: the input holds PATTERN. It reads the input whole, so that it
# never cuts grpcurl off mid-answer (grep -q would, and pipefail would then
# fail a check that passed).
has() { grep -- "$1" >/dev/null; }
# fail NAME: a check failed. Checks are written "CHECK || fail NAME; ok NAME":
# set -e does not stop at a failure inside an && list, so it must be said.
fail() { echo "FAIL: $1: the answer was not what it should be" >&2; exit 1; }
expect_fail() { # expect_fail CODE METHOD JSON
  if out=$(call "$2" "$3" 2>&1); then echo "$2 should have failed: $out"; exit 1; fi
  grep -q "Code: $1" <<<"$out" || { echo "$2: want $1, got: $out"; exit 1; }
  ok "$2 -> $1"
}

echo "Custos grpcurl tour against $addr, tenant $t"
call KeyService/CreateTenant "{\"tenant_id\":\"$t\"}" >/dev/null || fail KeyService/CreateTenant; ok KeyService/CreateTenant
call KeyService/GetTenant "{\"name\":\"tenants/$t\"}" | has TENANT_STATE_ACTIVE || fail KeyService/GetTenant; ok KeyService/GetTenant
# Page until the new tenant shows (a long-used dev directory holds many); the
# whole answer is read before it is searched, so grep -q never cuts grpcurl.
found= tok=
for _ in $(seq 100); do
  out=$(call KeyService/ListTenants "{\"page_size\":1000,\"page_token\":\"$tok\"}")
  if grep -q "\"tenants/$t\"" <<<"$out"; then found=1; break; fi
  tok=$(field "['nextPageToken']" <<<"$out" 2>/dev/null) || tok=
  [ -n "$tok" ] || break
done
[ -n "$found" ] || fail KeyService/ListTenants; ok KeyService/ListTenants
for k in enc:ENCRYPT det:ENCRYPT_DETERMINISTIC idx:MAC pw:PASSWORD; do
  call KeyService/CreateKey "{\"parent\":\"tenants/$t\",\"key_id\":\"${k%%:*}\",\"key\":{\"purpose\":\"KEY_PURPOSE_${k##*:}\"}}" >/dev/null
done
ok "KeyService/CreateKey (4 purposes)"
call KeyService/ListKeys "{\"parent\":\"tenants/$t\"}" | has "tenants/$t/keys/pw" || fail KeyService/ListKeys; ok KeyService/ListKeys
K="tenants/$t/keys/enc"

ct1=$(call CryptoService/Encrypt "{\"name\":\"$K\",\"plaintext\":\"$(b64 alice@example.com)\",\"associated_data\":\"$(b64 row-1/email)\"}" | field "['ciphertext']")
ok CryptoService/Encrypt
call KeyService/RotateKey "{\"name\":\"$K\"}" | has '"primaryVersion": 2' || fail KeyService/RotateKey; ok KeyService/RotateKey
call KeyService/GetKey "{\"name\":\"$K\"}" | has '"version": 2' || fail KeyService/GetKey; ok KeyService/GetKey
pt=$(call CryptoService/Decrypt "{\"name\":\"$K\",\"ciphertext\":\"$ct1\",\"associated_data\":\"$(b64 row-1/email)\"}" | field "['plaintext']")
[ "$(base64 -d <<<"$pt")" = alice@example.com ] || fail "CryptoService/Decrypt (old version)"; ok "CryptoService/Decrypt (old version)"
expect_fail InvalidArgument CryptoService/Decrypt "{\"name\":\"$K\",\"ciphertext\":\"$ct1\",\"associated_data\":\"$(b64 row-1/iban)\"}"

batch=$(call CryptoService/EncryptBatch "{\"name\":\"$K\",\"items\":[{\"plaintext\":\"$(b64 a)\"},{\"plaintext\":\"$(b64 b)\"}]}")
c0=$(field "['results'][0]['ciphertext']" <<<"$batch"); ok CryptoService/EncryptBatch
call CryptoService/DecryptBatch "{\"name\":\"$K\",\"items\":[{\"ciphertext\":\"$c0\"},{\"ciphertext\":\"$ct1\"}]}" | has '"code": 3' || fail "CryptoService/DecryptBatch (item 2 refused)"; ok "CryptoService/DecryptBatch (item 2 refused)"
call CryptoService/Rewrap "{\"name\":\"$K\",\"ciphertext\":\"$ct1\",\"associated_data\":\"$(b64 row-1/email)\"}" | has '"keyVersion": 2' || fail CryptoService/Rewrap; ok CryptoService/Rewrap
call CryptoService/RewrapBatch "{\"name\":\"$K\",\"items\":[{\"ciphertext\":\"$ct1\",\"associated_data\":\"$(b64 row-1/email)\"}]}" | has '"keyVersion": 2' || fail CryptoService/RewrapBatch; ok CryptoService/RewrapBatch
dk=$(call CryptoService/GenerateDataKey "{\"name\":\"$K\",\"associated_data\":\"$(b64 object-7)\"}")
w=$(field "['wrapped']" <<<"$dk"); p=$(field "['plaintext']" <<<"$dk"); ok CryptoService/GenerateDataKey
[ "$(call CryptoService/Decrypt "{\"name\":\"$K\",\"ciphertext\":\"$w\",\"associated_data\":\"$(b64 object-7)\"}" | field "['plaintext']")" = "$p" ] || fail "CryptoService/Decrypt (data key)"; ok "CryptoService/Decrypt (data key)"

D="tenants/$t/keys/det"
d1=$(call CryptoService/Encrypt "{\"name\":\"$D\",\"plaintext\":\"$(b64 bob)\"}" | field "['ciphertext']")
d2=$(call CryptoService/Encrypt "{\"name\":\"$D\",\"plaintext\":\"$(b64 bob)\"}" | field "['ciphertext']")
[ "$d1" = "$d2" ] || fail "CryptoService/Encrypt (deterministic)"; ok "CryptoService/Encrypt (deterministic)"

M="tenants/$t/keys/idx"
mac=$(call CryptoService/ComputeMac "{\"name\":\"$M\",\"data\":\"$(b64 alice)\"}" | field "['mac']"); ok CryptoService/ComputeMac
call CryptoService/VerifyMac "{\"name\":\"$M\",\"data\":\"$(b64 alice)\",\"mac\":\"$mac\"}" | has '"valid": true' || fail CryptoService/VerifyMac; ok CryptoService/VerifyMac
call KeyService/RotateKey "{\"name\":\"$M\"}" >/dev/null
[ "$(call CryptoService/BlindIndex "{\"name\":\"$M\",\"data\":\"$(b64 alice)\"}" | grep -c keyVersion)" = 2 ] || fail "CryptoService/BlindIndex (2 versions)"; ok "CryptoService/BlindIndex (2 versions)"

P="tenants/$t/keys/pw"
h=$(call CryptoService/HashPassword "{\"name\":\"$P\",\"password\":\"$(b64 correct-horse)\"}" | field "['hash']"); ok CryptoService/HashPassword
call CryptoService/VerifyPassword "{\"name\":\"$P\",\"password\":\"$(b64 correct-horse)\",\"hash\":\"$h\"}" | has '"match": true' || fail CryptoService/VerifyPassword; ok CryptoService/VerifyPassword

mask='"update_mask":{"paths":["min_decryption_version"]}'
call KeyService/UpdateKey "{\"key\":{\"name\":\"$K\",\"min_decryption_version\":2},$mask}" >/dev/null
expect_fail FailedPrecondition CryptoService/Decrypt "{\"name\":\"$K\",\"ciphertext\":\"$ct1\",\"associated_data\":\"$(b64 row-1/email)\"}"
call KeyService/UpdateKey "{\"key\":{\"name\":\"$K\",\"min_decryption_version\":0},$mask}" >/dev/null || fail KeyService/UpdateKey; ok KeyService/UpdateKey
call KeyService/DisableKeyVersion "{\"name\":\"$K\",\"version\":1}" | has KEY_VERSION_STATE_DISABLED || fail KeyService/DisableKeyVersion; ok KeyService/DisableKeyVersion
call KeyService/EnableKeyVersion "{\"name\":\"$K\",\"version\":1}" >/dev/null || fail KeyService/EnableKeyVersion; ok KeyService/EnableKeyVersion
call KeyService/DestroyKeyVersion "{\"name\":\"$K\",\"version\":1}" | has KEY_VERSION_STATE_DESTROY_SCHEDULED || fail KeyService/DestroyKeyVersion; ok KeyService/DestroyKeyVersion
call KeyService/RestoreKeyVersion "{\"name\":\"$K\",\"version\":1}" | has KEY_VERSION_STATE_DISABLED || fail KeyService/RestoreKeyVersion; ok KeyService/RestoreKeyVersion

call KeyService/DeleteTenant "{\"name\":\"tenants/$t\",\"waiting_period\":\"86400s\"}" | has TENANT_STATE_DELETE_SCHEDULED || fail KeyService/DeleteTenant; ok KeyService/DeleteTenant
expect_fail FailedPrecondition CryptoService/Encrypt "{\"name\":\"$K\",\"plaintext\":\"$(b64 x)\"}"
call KeyService/UndeleteTenant "{\"name\":\"tenants/$t\"}" | has TENANT_STATE_ACTIVE || fail KeyService/UndeleteTenant; ok KeyService/UndeleteTenant
call CryptoService/Encrypt "{\"name\":\"$K\",\"plaintext\":\"$(b64 x)\"}" >/dev/null || fail "CryptoService/Encrypt (after undelete)"; ok "CryptoService/Encrypt (after undelete)"
"$grpcurl" -max-time 60 -cacert "$dir/ca.pem" -cert "$dir/client.pem" -key "$dir/client-key.pem" "$addr" grpc.health.v1.Health/Check | has SERVING || fail grpc.health.v1.Health/Check; ok grpc.health.v1.Health/Check

# The audit trail: the tenant's events appear once the log signs a
# checkpoint (every 2s by default); each comes with its inclusion proof.
for _ in $(seq 1 30); do
  ev=$(call AuditService/ListAuditEvents "{\"parent\":\"tenants/$t\",\"operation\":\"undelete_tenant\"}")
  grep -q undelete_tenant <<<"$ev" && break
  sleep 0.5
done
grep -q '"inclusionProof"' <<<"$ev" || fail AuditService/ListAuditEvents; ok AuditService/ListAuditEvents
cp=$(call AuditService/GetAuditCheckpoint "{\"parent\":\"tenants/$t\"}")
grep -q '"publicKey": "custos-audit+' <<<"$cp" || fail AuditService/GetAuditCheckpoint; ok AuditService/GetAuditCheckpoint
expect_fail InvalidArgument AuditService/ListAuditEvents "{\"parent\":\"tenants/$t\",\"operation\":\"steal_keys\"}"
echo "every RPC answered as expected"
