r"""Calls Custos from Python with nothing but the protos in proto/.

Debian's python3-grpcio and python3-grpc-tools; the stubs are generated
from a copy of proto/ first. (Debian's grpc-tools bundle protoc 3.5, which
predates proto3 optional fields: the copy drops that label from the proto3
files, as the test does; on the wire it is the same field. protoc runs in the
copy, so that the shell expands the file patterns there.) From this
directory, against `custos dev` (make run):

    out=$(mktemp -d) src=$(mktemp -d)
    cp -r ../../proto/. "$src"
    sed -i 's/^\(\s*\)optional /\1/' $(grep -rlE '^\s*optional ' "$src" | xargs grep -l 'syntax = "proto3"')
    (cd "$src" && /usr/bin/python3 -m grpc_tools.protoc -I . --python_out=$out --grpc_python_out=$out \
        custos/v1/*.proto buf/validate/validate.proto google/rpc/*.proto grpc/health/v1/health.proto)
    PYTHONPATH=$out /usr/bin/python3 example.py 127.0.0.1:8443 ../../.custos-dev

It checks health, creates a tenant with an ENCRYPT, a MAC and a PASSWORD
key, encrypts and decrypts with associated data, runs a batch with one bad
item and reads its per-item status, reads the ErrorInfo reason of a refused
call, computes a blind index, and hashes and verifies a password (with a
subject, for the lockout), hashing it again when a rotation makes the answer
say needs_rehash.
"""
import base64
import os
import sys
import time

import grpc

# The stubs of grpc/health/v1/health.proto land in a "grpc" directory, which
# the grpcio package of the same name shadows: let the package find them.
for _p in sys.path:
    _d = os.path.join(_p, "grpc")
    if os.path.isdir(os.path.join(_d, "health")) and _d not in grpc.__path__:
        grpc.__path__.append(_d)

from custos.v1 import crypto_service_pb2 as cpb, crypto_service_pb2_grpc as cgrpc
from custos.v1 import key_service_pb2 as kpb, key_service_pb2_grpc as kgrpc
from custos.v1 import resources_pb2 as rpb
from google.rpc import error_details_pb2, status_pb2
from grpc.health.v1 import health_pb2, health_pb2_grpc


def read(d, name):
    with open(os.path.join(d, name), "rb") as f:
        return f.read()


def ok(what, cond):
    if not cond:
        raise SystemExit(f"python example: {what}: unexpected answer")
    print(f"ok  {what}")


def associated_data(*parts):
    """Encodes parts as the Go client's client.AssociatedData does
    (docs/formats.md), so that a field one language encrypts the other
    decrypts: each part's length as 4 bytes big-endian, then its bytes."""
    out = b""
    for p in parts:
        b = p.encode() if isinstance(p, str) else p
        out += len(b).to_bytes(4, "big") + b
    return out


def reason(err):
    """Custos's google.rpc.ErrorInfo reason of a failed call (domain
    custos.dev: a proxy on the way may add ErrorInfo of its own)."""
    for key, value in err.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            st = status_pb2.Status.FromString(value)
            for any_ in st.details:
                info = error_details_pb2.ErrorInfo()
                if any_.Unpack(info) and info.domain == "custos.dev":
                    return info.reason
    return ""


def main(addr, dev):
    creds = grpc.ssl_channel_credentials(read(dev, "ca.pem"), read(dev, "client-key.pem"), read(dev, "client.pem"))
    ch = grpc.secure_channel(addr, creds)
    keys, crypto, health = kgrpc.KeyServiceStub(ch), cgrpc.CryptoServiceStub(ch), health_pb2_grpc.HealthStub(ch)
    t = 10

    h = health.Check(health_pb2.HealthCheckRequest(), timeout=t)
    ok("health: SERVING", h.status == health_pb2.HealthCheckResponse.SERVING)

    tenant = f"py-{time.time_ns()}"
    keys.CreateTenant(kpb.CreateTenantRequest(tenant_id=tenant), timeout=t)
    for key_id, purpose in (("enc", rpb.KEY_PURPOSE_ENCRYPT), ("idx", rpb.KEY_PURPOSE_MAC), ("pw", rpb.KEY_PURPOSE_PASSWORD)):
        keys.CreateKey(kpb.CreateKeyRequest(parent=f"tenants/{tenant}", key_id=key_id, key=rpb.Key(purpose=purpose)), timeout=t)
    ok(f"tenant {tenant} with 3 keys", True)
    enc = f"tenants/{tenant}/keys/enc"

    ad = associated_data("customer-42", "email")
    e = crypto.Encrypt(cpb.EncryptRequest(name=enc, plaintext=b"alice@example.com", associated_data=ad), timeout=t)
    d = crypto.Decrypt(cpb.DecryptRequest(name=enc, ciphertext=e.ciphertext, associated_data=ad), timeout=t)
    ok("encrypt and decrypt with associated data", d.plaintext == b"alice@example.com" and d.key_version == 1)
    # For the test: the Go client decrypts this with client.AssociatedData.
    print(f"cross-check: {enc} {base64.b64encode(e.ciphertext).decode()}")

    b = crypto.DecryptBatch(cpb.DecryptBatchRequest(name=enc, items=[
        cpb.DecryptBatchRequest.Item(ciphertext=e.ciphertext, associated_data=ad),
        cpb.DecryptBatchRequest.Item(ciphertext=e.ciphertext, associated_data=associated_data("customer-43", "email")),
    ]), timeout=t)
    ok("a batch with one bad item: item 1 OK, item 2 INVALID_ARGUMENT",
       b.results[0].status.code == 0 and b.results[0].plaintext == b"alice@example.com" and b.results[1].status.code == 3)

    try:
        crypto.Decrypt(cpb.DecryptRequest(name=enc, ciphertext=e.ciphertext, associated_data=associated_data("customer-43", "email")), timeout=t)
        raise SystemExit("python example: a decrypt with the wrong associated data succeeded")
    except grpc.RpcError as err:
        r = reason(err)
        ok(f"a refused call's ErrorInfo reason: {r}", err.code() == grpc.StatusCode.INVALID_ARGUMENT and r == "CIPHERTEXT_NOT_AUTHENTIC")

    bi = crypto.BlindIndex(cpb.BlindIndexRequest(name=f"tenants/{tenant}/keys/idx", data=b"alice@example.com"), timeout=t)
    ok("blind index: one entry per enabled version", len(bi.entries) == 1 and len(bi.entries[0].mac) > 32)

    # Hashing is slow by design (bcrypt cost 12), and waits in the server's
    # hashing queue behind other callers': a longer deadline.
    pw, th = f"tenants/{tenant}/keys/pw", 60
    password = b"correct horse"

    # A login: verify with the user's id as subject (failures count towards
    # the key's lockout), and when the answer says needs_rehash (the key
    # rotated, or its policy was raised), hash the password again and store
    # the new hash, before the old version is disabled.
    def login(stored):
        v = crypto.VerifyPassword(cpb.VerifyPasswordRequest(name=pw, password=password, hash=stored, subject="user-42"), timeout=th)
        if v.match and v.needs_rehash:
            fresh = crypto.HashPassword(cpb.HashPasswordRequest(name=pw, password=password), timeout=th)
            print("    rehashed (store the new hash)")
            return True, fresh.hash
        return v.match, stored

    hp = crypto.HashPassword(cpb.HashPasswordRequest(name=pw, password=password), timeout=th)
    match, stored = login(hp.hash)
    bad = crypto.VerifyPassword(cpb.VerifyPasswordRequest(name=pw, password=b"wrong horse", hash=hp.hash, subject="user-42"), timeout=th)
    ok("hash and verify a password", match and stored == hp.hash and not bad.match)
    keys.RotateKey(kpb.RotateKeyRequest(name=pw), timeout=t)  # what a rotation means for stored hashes
    match2, stored2 = login(stored)
    check = crypto.VerifyPassword(cpb.VerifyPasswordRequest(name=pw, password=password, hash=stored2), timeout=th)
    ok("after a rotation: needs_rehash, hashed again under the new version", match2 and stored2 != stored and check.match and not check.needs_rehash)
    print("python example: every call answered as expected")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:8443", sys.argv[2] if len(sys.argv) > 2 else ".custos-dev")
