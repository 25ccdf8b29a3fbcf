'use strict';
// An offline Sigstore instance for the end-to-end tests: @sigstore/mock's Fulcio, Rekor and
// timestamp authority served over real HTTP on 127.0.0.1 (the package itself only offers nock
// interceptors inside one process; its handlers are what we serve).
//
// Usage: node sigstore-instance.js TRUSTED_ROOT_OUT
// Writes the instance's trusted_root.json (Sigstore's JSON form) to TRUSTED_ROOT_OUT, then prints
// one line `listening http://127.0.0.1:PORT` and serves until killed. Fulcio, Rekor and the TSA
// share the port: their paths differ.
const fs = require('fs');
const http = require('http');
const crypto = require('crypto');
const mock = require('@sigstore/mock');

function keyPair() {
  return crypto.generateKeyPairSync('ec', { namedCurve: 'prime256v1' });
}

function b64(bytes) {
  return Buffer.from(bytes).toString('base64');
}

async function main() {
  const out = process.argv[2];
  if (!out) throw new Error('usage: sigstore-instance.js TRUSTED_ROOT_OUT');
  // The validity start is a little in the past so that a signature made this second verifies.
  const start = new Date(Date.now() - 60 * 1000).toISOString();
  const caKeys = keyPair();
  const ctlog = await mock.initializeCTLog(caKeys);
  const ca = await mock.initializeCA(caKeys, ctlog);
  const server = http.createServer();
  server.listen(0, '127.0.0.1');
  await new Promise((resolve) => server.once('listening', resolve));
  const base = `http://127.0.0.1:${server.address().port}`;
  const tlogKeys = keyPair();
  const tlog = await mock.initializeTLog(base, tlogKeys);
  const tsa = await mock.initializeTSA(keyPair());
  const handlers = [
    mock.fulcioHandler(ca),
    mock.rekorHandler(tlog),
    mock.tsaHandler(tsa),
  ];
  server.on('request', (req, res) => {
    const chunks = [];
    req.on('data', (chunk) => chunks.push(chunk));
    req.on('end', async () => {
      const handler = handlers.find((h) => h.path === req.url.split('?')[0]);
      if (req.method !== 'POST' || handler === undefined) {
        res.writeHead(404).end();
        return;
      }
      const reply = await handler.fn(Buffer.concat(chunks).toString());
      res.writeHead(reply.statusCode, { 'Content-Type': reply.contentType || 'text/plain' });
      res.end(reply.response);
    });
  });
  const tlogKey = Buffer.from(tlog.publicKey);
  const ctKey = Buffer.from(ctlog.publicKey);
  const root = {
    mediaType: 'application/vnd.dev.sigstore.trustedroot+json;version=0.1',
    tlogs: [
      {
        baseUrl: base,
        hashAlgorithm: 'SHA2_256',
        publicKey: {
          rawBytes: b64(tlogKey),
          keyDetails: 'PKIX_ECDSA_P256_SHA_256',
          validFor: { start },
        },
        logId: { keyId: b64(crypto.createHash('sha256').update(tlogKey).digest()) },
      },
    ],
    certificateAuthorities: [
      {
        subject: { organization: 'sigstore.mock', commonName: 'sigstore' },
        uri: base,
        certChain: { certificates: [{ rawBytes: b64(ca.rootCertificate) }] },
        validFor: { start },
      },
    ],
    ctlogs: [
      {
        baseUrl: base,
        hashAlgorithm: 'SHA2_256',
        publicKey: {
          rawBytes: b64(ctKey),
          keyDetails: 'PKIX_ECDSA_P256_SHA_256',
          validFor: { start },
        },
        logId: { keyId: b64(Buffer.from(ctlog.logID)) },
      },
    ],
    timestampAuthorities: [
      {
        subject: { organization: 'sigstore.mock', commonName: 'tsa' },
        uri: base,
        certChain: {
          certificates: [{ rawBytes: b64(tsa.intCertificate) }, { rawBytes: b64(tsa.rootCertificate) }],
        },
        validFor: { start },
      },
    ],
  };
  fs.writeFileSync(out, JSON.stringify(root, null, 2));
  process.stdout.write(`listening ${base}\n`);
}

main().catch((err) => {
  process.stderr.write(`${err.stack || err}\n`);
  process.exit(1);
});
