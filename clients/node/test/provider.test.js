'use strict';
const test = require('node:test');
const assert = require('node:assert/strict');
const { OpenFeature } = require('@openfeature/server-sdk');
const { AugurProvider, augurContext, parseFlags, REASONS } = require('../index.js');

const NEW = {
  'X-Augur-Stack': 'new',
  'x-augur-flags': '@model=default-v1,a=on;enabled;72,b=off;kill_switch,c=off;holdout;12',
  'x-augur-decision': 'req-1',
  'x-other': 'ignored',
};

async function client() {
  await OpenFeature.setProviderAndWait(new AugurProvider());
  return OpenFeature.getClient();
}

test('on, off and holdout decisions resolve with variant, reason and metadata', async () => {
  const c = await client();
  const a = await c.getBooleanDetails('a', false, augurContext(NEW));
  assert.equal(a.value, true);
  assert.equal(a.variant, 'on');
  assert.equal(a.reason, 'TARGETING_MATCH');
  assert.deepEqual(a.flagMetadata, {
    stack: 'new', reason: 'enabled', model_ok: true, model_version: 'default-v1', score: 72, decision_id: 'req-1',
  });
  const b = await c.getBooleanDetails('b', true, augurContext(NEW));
  assert.equal(b.value, false);
  assert.equal(b.variant, 'off');
  assert.equal(b.reason, 'DISABLED');
  assert.equal(b.flagMetadata.score, undefined);
  const h = await c.getBooleanDetails('c', true, augurContext(NEW));
  assert.equal(h.reason, 'SPLIT');
  assert.equal(h.flagMetadata.score, 12);
});

test('old stack: every flag is off by the split', async () => {
  const c = await client();
  const d = await c.getBooleanDetails('a', true, augurContext({ 'x-augur-stack': 'old' }));
  assert.equal(d.value, false);
  assert.equal(d.reason, 'SPLIT');
  assert.equal(d.flagMetadata.reason, 'old_stack');
});

test('errors give the default value and say what to fix', async () => {
  const c = await client();
  const missing = await c.getBooleanDetails('zz', true, augurContext(NEW));
  assert.equal(missing.value, true);
  assert.equal(missing.errorCode, 'FLAG_NOT_FOUND');
  assert.match(missing.errorMessage, /add it to the augur configuration/);
  const noAugur = await c.getBooleanDetails('a', true, augurContext({}));
  assert.equal(noAugur.errorCode, 'INVALID_CONTEXT');
  const bad = await c.getBooleanDetails('a', true, augurContext({ 'x-augur-stack': 'new', 'x-augur-flags': 'a=maybe' }));
  assert.equal(bad.errorCode, 'PARSE_ERROR');
  const str = await c.getStringDetails('a', 'x', augurContext(NEW));
  assert.equal(str.errorCode, 'TYPE_MISMATCH');
  assert.equal(str.value, 'x');
});

test('model failures and the reason table', () => {
  const p = parseFlags('@model=m.2;error,a=on;fallback_on');
  assert.equal(p.model, 'm.2');
  assert.equal(p.modelOk, false);
  assert.deepEqual(p.flags.a, { on: true, reason: 'fallback_on', score: undefined });
  assert.equal(REASONS.fallback_on, 'DEFAULT');
  assert.equal(Object.keys(REASONS).length, 19, 'every augur reason is mapped (the full list: augur schema, python/tests/test_openfeature.py)');
});
