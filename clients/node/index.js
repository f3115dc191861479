'use strict';
/**
 * OpenFeature provider for augur (Node, @openfeature/server-sdk).
 *
 * augur runs in Envoy in front of the app and tells it, in request headers,
 * which stack serves the request and each feature's decision:
 *
 *   x-augur-stack:     old | new
 *   x-augur-flags:     @model=default-v1,new_checkout=on;enabled;72,search_v2=off;security_risk;41
 *   x-augur-features:  new_checkout                       (new stack only)
 *   x-augur-decision:  <decision id = request id in augur's access log>
 *
 * Pass the request's headers as evaluation context (`augurContext(req.headers)`,
 * per call or as transaction context); boolean flags resolve to augur's
 * decision with variant on/off, an OpenFeature reason and flag metadata
 * (augur's reason, score, model version, stack, decision id). augur strips
 * every client-sent x-augur-* header before deciding, so they cannot be forged.
 *
 *   const { OpenFeature } = require('@openfeature/server-sdk');
 *   const { AugurProvider, augurContext } = require('augur-openfeature');
 *   await OpenFeature.setProviderAndWait(new AugurProvider());
 *   const client = OpenFeature.getClient();
 *   const on = await client.getBooleanValue('search_v2', false, augurContext(req.headers));
 */
const {
  StandardResolutionReasons: R,
  FlagNotFoundError,
  ParseError,
  TypeMismatchError,
  InvalidContextError,
} = require('@openfeature/server-sdk');

const PREFIX = 'x-augur-';
const HEADERS = ['stack', 'features', 'flags', 'decision'].map((h) => PREFIX + h);

/** augur reason -> OpenFeature reason (same table as the Python provider). */
const REASONS = {
  enabled: R.TARGETING_MATCH,
  forced_on: R.STATIC,
  fallback_on: R.DEFAULT,
  fallback_off: R.DEFAULT,
  global_off: R.DISABLED,
  kill_switch: R.DISABLED,
  denied_segment: R.TARGETING_MATCH,
  not_in_allowed_segment: R.TARGETING_MATCH,
  prerequisite_off: R.TARGETING_MATCH,
  performance_cost: R.TARGETING_MATCH,
  error_risk: R.TARGETING_MATCH,
  security_risk: R.TARGETING_MATCH,
  low_engagement: R.TARGETING_MATCH,
  low_score: R.TARGETING_MATCH,
  old_stack: R.SPLIT,
  holdout: R.SPLIT,
  rolled_back: R.DISABLED,
  exploring: R.SPLIT,
  probing: R.SPLIT,
};

/** Evaluation context for one request from its headers (object or Headers/Map). */
function augurContext(headers) {
  const entries = typeof headers.entries === 'function' && !(headers.constructor === Object)
    ? Array.from(headers.entries())
    : Object.entries(headers);
  const ctx = {};
  for (const [k, v] of entries) {
    const name = k.toLowerCase();
    if (HEADERS.includes(name)) ctx[name] = Array.isArray(v) ? v.join(',') : String(v);
  }
  if (ctx[PREFIX + 'decision']) ctx.targetingKey = ctx[PREFIX + 'decision'];
  return ctx;
}

/** `x-augur-flags` -> { model, modelOk, flags: { name: { on, reason, score } } }. */
function parseFlags(value) {
  let model = null;
  let modelOk = true;
  const flags = {};
  for (const entry of value.split(',').map((e) => e.trim()).filter(Boolean)) {
    const eq = entry.indexOf('=');
    if (eq < 0) throw new ParseError(`x-augur-flags: entry "${entry}" has no '='`);
    const name = entry.slice(0, eq);
    const fields = entry.slice(eq + 1).split(';');
    if (name === '@model') {
      model = fields[0];
      modelOk = !fields.slice(1).includes('error');
      continue;
    }
    if (!['on', 'off'].includes(fields[0]) || fields.length < 2 || fields.length > 3) {
      throw new ParseError(`x-augur-flags: entry "${entry}" is not <feature>=<on|off>;<reason>[;<score>]`);
    }
    flags[name] = { on: fields[0] === 'on', reason: fields[1], score: fields.length === 3 ? Number(fields[2]) : undefined };
  }
  return { model, modelOk, flags };
}

class AugurProvider {
  constructor() {
    this.metadata = { name: 'augur' };
    this.runsOn = 'server';
    this.hooks = [];
  }

  resolveBooleanEvaluation(flagKey, defaultValue, context) {
    const stack = context[PREFIX + 'stack'];
    if (stack === undefined) {
      throw new InvalidContextError(
        'no x-augur-stack in the evaluation context: pass augurContext(req.headers), ' +
          'and check that the request came through Envoy with the augur filter',
      );
    }
    const decision = context[PREFIX + 'decision'];
    if (stack !== 'new') {
      return { value: false, variant: 'off', reason: R.SPLIT, flagMetadata: { stack, reason: 'old_stack' } };
    }
    const raw = context[PREFIX + 'flags'];
    if (raw === undefined) {
      const on = (context[PREFIX + 'features'] || '').split(',').includes(flagKey);
      const flagMetadata = { stack };
      if (decision) flagMetadata.decision_id = decision;
      return { value: on, variant: on ? 'on' : 'off', reason: R.UNKNOWN, flagMetadata };
    }
    const { model, modelOk, flags } = parseFlags(raw);
    const flag = flags[flagKey];
    if (!flag) {
      throw new FlagNotFoundError(
        `augur decided no feature "${flagKey}" (it decided: ${Object.keys(flags).join(', ') || 'none'}); ` +
          "add it to the augur configuration's features",
      );
    }
    const flagMetadata = { stack, reason: flag.reason, model_ok: modelOk };
    if (model) flagMetadata.model_version = model;
    if (flag.score !== undefined) flagMetadata.score = flag.score;
    if (decision) flagMetadata.decision_id = decision;
    return {
      value: flag.on,
      variant: flag.on ? 'on' : 'off',
      reason: REASONS[flag.reason] || R.UNKNOWN,
      flagMetadata,
    };
  }

  resolveStringEvaluation(flagKey) {
    throw new TypeMismatchError(`augur flags are boolean; "${flagKey}" was asked as a string`);
  }

  resolveNumberEvaluation(flagKey) {
    throw new TypeMismatchError(`augur flags are boolean; "${flagKey}" was asked as a number`);
  }

  resolveObjectEvaluation(flagKey) {
    throw new TypeMismatchError(`augur flags are boolean; "${flagKey}" was asked as an object`);
  }
}

module.exports = { AugurProvider, augurContext, parseFlags, REASONS };
