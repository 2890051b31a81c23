// Calls Custos from Node.js with nothing but the protos in proto/:
// @grpc/grpc-js, @grpc/proto-loader and protobufjs from npm (pinned in
// package-lock.json). Against `custos dev` (make run):
//
//   cd examples/node && npm ci --ignore-scripts && node index.js 127.0.0.1:8443 ../../.custos-dev
//
// It checks health, creates a tenant with an ENCRYPT, a MAC and a PASSWORD
// key, encrypts and decrypts with associated data, runs a batch with one bad
// item and reads its per-item status, reads the ErrorInfo reason of a
// refused call, computes a blind index, and hashes and verifies a password
// (with a subject, for the lockout), hashing it again when a rotation makes
// the answer say needs_rehash.
'use strict';

const fs = require('fs');
const path = require('path');
const grpc = require('@grpc/grpc-js');
const loader = require('@grpc/proto-loader');
const protobuf = require('protobufjs');

const [addr = '127.0.0.1:8443', devDir = '.custos-dev'] = process.argv.slice(2);
const protoDir = path.join(__dirname, '..', '..', 'proto');
const files = [
  'custos/v1/key_service.proto', 'custos/v1/crypto_service.proto',
  'grpc/health/v1/health.proto', 'google/rpc/status.proto', 'google/rpc/error_details.proto',
];
const def = grpc.loadPackageDefinition(loader.loadSync(files, {
  includeDirs: [protoDir], keepCase: true, longs: String, enums: String, defaults: true,
}));
// protobufjs decodes the error details a failure carries.
const root = new protobuf.Root();
root.resolvePath = (_, target) => path.join(protoDir, target);
root.loadSync(['google/rpc/status.proto', 'google/rpc/error_details.proto']);
const Status = root.lookupType('google.rpc.Status');
const ErrorInfo = root.lookupType('google.rpc.ErrorInfo');

// associatedData encodes parts as the Go client's client.AssociatedData
// does (docs/formats.md), so that a field one language encrypts the other
// decrypts: each part's length as 4 bytes big-endian, then its bytes.
function associatedData(...parts) {
  return Buffer.concat(parts.flatMap((p) => {
    const b = Buffer.from(p);
    const n = Buffer.alloc(4);
    n.writeUInt32BE(b.length);
    return [n, b];
  }));
}

const creds = grpc.credentials.createSsl(
  fs.readFileSync(path.join(devDir, 'ca.pem')),
  fs.readFileSync(path.join(devDir, 'client-key.pem')),
  fs.readFileSync(path.join(devDir, 'client.pem')));
const keys = new def.custos.v1.KeyService(addr, creds);
const crypto = new def.custos.v1.CryptoService(addr, creds);
const health = new def.grpc.health.v1.Health(addr, creds);

// Each call gets 10 s; hashing, slow by design (bcrypt cost 12) and queued
// behind other callers' hashes, 60 s.
const call = (client, method, req, seconds = 10) => new Promise((resolve, reject) => {
  client[method](req, { deadline: Date.now() + seconds * 1000 }, (err, resp) => (err ? reject(err) : resolve(resp)));
});

// reason reads Custos's google.rpc.ErrorInfo reason of a failed call (domain
// custos.dev: a proxy on the way may add ErrorInfo of its own).
function reason(err) {
  const bin = err.metadata && err.metadata.get('grpc-status-details-bin')[0];
  if (!bin) return '';
  for (const any of Status.decode(bin).details) {
    if (!any.type_url.endsWith('/google.rpc.ErrorInfo')) continue;
    const info = ErrorInfo.decode(any.value);
    if (info.domain === 'custos.dev') return info.reason;
  }
  return '';
}

function ok(what, cond) {
  if (!cond) throw new Error(`${what}: unexpected answer`);
  console.log(`ok  ${what}`);
}

async function main() {
  const h = await call(health, 'Check', { service: '' });
  ok('health: SERVING', h.status === 'SERVING');

  const t = `node-${Date.now()}`;
  await call(keys, 'CreateTenant', { tenant_id: t });
  for (const [id, purpose] of [['enc', 'KEY_PURPOSE_ENCRYPT'], ['idx', 'KEY_PURPOSE_MAC'], ['pw', 'KEY_PURPOSE_PASSWORD']]) {
    await call(keys, 'CreateKey', { parent: `tenants/${t}`, key_id: id, key: { purpose } });
  }
  ok(`tenant ${t} with 3 keys`, true);
  const enc = `tenants/${t}/keys/enc`;

  const ad = associatedData('customer-42', 'email');
  const e = await call(crypto, 'Encrypt', { name: enc, plaintext: Buffer.from('alice@example.com'), associated_data: ad });
  const d = await call(crypto, 'Decrypt', { name: enc, ciphertext: e.ciphertext, associated_data: ad });
  ok('encrypt and decrypt with associated data', d.plaintext.toString() === 'alice@example.com' && d.key_version === 1);
  // For the test: the Go client decrypts this with client.AssociatedData.
  console.log(`cross-check: ${enc} ${e.ciphertext.toString('base64')}`);

  const b = await call(crypto, 'DecryptBatch', {
    name: enc,
    items: [{ ciphertext: e.ciphertext, associated_data: ad }, { ciphertext: e.ciphertext, associated_data: associatedData('customer-43', 'email') }],
  });
  ok('a batch with one bad item: item 1 OK, item 2 INVALID_ARGUMENT',
    b.results[0].status.code === 0 && b.results[0].plaintext.toString() === 'alice@example.com' && b.results[1].status.code === 3);

  let refused = null;
  try {
    await call(crypto, 'Decrypt', { name: enc, ciphertext: e.ciphertext, associated_data: associatedData('customer-43', 'email') });
  } catch (err) {
    refused = err;
  }
  if (!refused) throw new Error('a decrypt with the wrong associated data succeeded');
  ok(`a refused call's ErrorInfo reason: ${reason(refused)}`, refused.code === grpc.status.INVALID_ARGUMENT && reason(refused) === 'CIPHERTEXT_NOT_AUTHENTIC');

  const bi = await call(crypto, 'BlindIndex', { name: `tenants/${t}/keys/idx`, data: Buffer.from('alice@example.com') });
  ok('blind index: one entry per enabled version', bi.entries.length === 1 && bi.entries[0].mac.length > 32);

  // A login: verify with the user's id as subject (failures count towards
  // the key's lockout), and when the answer says needs_rehash (the key
  // rotated, or its policy was raised), hash the password again and store
  // the new hash, before the old version is disabled.
  const pwKey = `tenants/${t}/keys/pw`;
  const password = Buffer.from('correct horse');
  const login = async (stored) => {
    const v = await call(crypto, 'VerifyPassword', { name: pwKey, password, hash: stored, subject: 'user-42' }, 60);
    if (v.match && v.needs_rehash) {
      const fresh = await call(crypto, 'HashPassword', { name: pwKey, password }, 60);
      console.log('    rehashed (store the new hash)');
      return { match: true, stored: fresh.hash };
    }
    return { match: v.match, stored };
  };
  const hp = await call(crypto, 'HashPassword', { name: pwKey, password }, 60);
  const first = await login(hp.hash);
  const bad = await call(crypto, 'VerifyPassword', { name: pwKey, password: Buffer.from('wrong horse'), hash: hp.hash, subject: 'user-42' }, 60);
  ok('hash and verify a password', first.match === true && first.stored === hp.hash && bad.match === false);
  await call(keys, 'RotateKey', { name: pwKey }); // what a rotation means for stored hashes
  const second = await login(first.stored);
  const check = await call(crypto, 'VerifyPassword', { name: pwKey, password, hash: second.stored }, 60);
  ok('after a rotation: needs_rehash, hashed again under the new version', second.match && second.stored !== first.stored && check.match && !check.needs_rehash);
  console.log('node example: every call answered as expected');
}

main().then(() => process.exit(0), (err) => { console.error(`node example: ${err.message}`); process.exit(1); });
