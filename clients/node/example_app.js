'use strict';
// A small app behind augur that reads its flags through OpenFeature.
//
//   node clients/node/example_app.js --port 18091
//
// Answers `GET /?flags=a,b` with JSON: for each flag, what
// client.getBooleanDetails(flag, false, augurContext(req.headers)) returned.
// The integration test runs it behind the real Envoy. Listens on 127.0.0.1 only.
const http = require('node:http');
const { OpenFeature } = require('@openfeature/server-sdk');
const { AugurProvider, augurContext } = require('./index.js');

const port = Number(process.argv[process.argv.indexOf('--port') + 1]);
if (!Number.isInteger(port) || port <= 0) {
  console.error('--port: give the port to listen on, e.g. --port 18091');
  process.exit(2);
}

OpenFeature.setProviderAndWait(new AugurProvider()).then(() => {
  const client = OpenFeature.getClient('example-app');
  http
    .createServer(async (req, res) => {
      const url = new URL(req.url, 'http://localhost');
      const flags = (url.searchParams.get('flags') || '').split(',').filter(Boolean);
      const ctx = augurContext(req.headers);
      const out = {};
      for (const flag of flags) {
        const d = await client.getBooleanDetails(flag, false, ctx);
        out[flag] = {
          value: d.value,
          variant: d.variant ?? null,
          reason: d.reason ?? null,
          error_code: d.errorCode ?? null,
          metadata: d.flagMetadata,
        };
      }
      const body = JSON.stringify({ flags: out, stack: req.headers['x-augur-stack'] ?? null });
      res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) });
      res.end(body);
    })
    .listen(port, '127.0.0.1');
});
