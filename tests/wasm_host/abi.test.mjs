// The built module (target/augur.wasm) against a deterministic proxy-wasm host
// (host.mjs), in V8: what src/abi.rs and src/filter.rs do when the host
// answers with errors, CAS mismatches or a malformed map, and that a replaced
// configuration hands over what it batched. `make integration` runs it after
// `make wasm`; alone: `node --test tests/wasm_host/`.

import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";

import { Host, MapType, Status } from "./host.mjs";

const DEMO = JSON.parse(readFileSync(new URL("../../envoy/augur-demo.json", import.meta.url)));

function headers(user, extra = []) {
  return [
    [":method", "GET"],
    [":path", "/api/search"],
    [":authority", "shop"],
    ["x-user-id", user],
    ["x-request-id", `req-${user}`],
    ...extra,
  ];
}

function started(config = DEMO) {
  const h = new Host();
  assert.equal(h.start(config), true, JSON.stringify(h.logs));
  return h;
}

const requestsTotal = (h, stack) => h.metric(`augur_requests_total.rollout.demo.stack.${stack}`);
const logged = (h, part) => h.logs.some(([, m]) => m.includes(part));

test("a request is decided, the client's control headers do not reach the app", () => {
  const h = started();
  let newStack = 0;
  for (let i = 0; i < 40; i++) {
    const forged = [["x-augur-stack", "new"], ["x-augur-features", "all"], ["x_augur_stack", "new"]];
    const s = h.request(headers(`u-${i}`, forged));
    assert.equal(s.action, 0);
    const stack = s.upstream.get("x-augur-stack");
    assert.ok(stack === "old" || stack === "new", stack);
    assert.equal(s.upstream.has("x_augur_stack"), false);
    if (stack === "new") {
      newStack++;
      assert.notEqual(s.upstream.get("x-augur-features"), "all");
    } else {
      assert.equal(s.upstream.has("x-augur-features"), false);
    }
    const record = JSON.parse(s.record);
    assert.equal(record.stack, stack);
    h.respond(s, [[":status", "200"]]);
  }
  assert.ok(newStack > 0 && newStack < 40, `${newStack} of 40 on the new stack at 30%`);
  h.tick(1000); // the stats flush
  assert.equal(h.metric("augur_spoofed_requests_total.rollout.demo"), 40n);
  assert.equal(requestsTotal(h, "new") + requestsTotal(h, "old"), 40n);
});

test("a host error on a call is logged and the stream goes on, never a trap", () => {
  const h = started();
  h.faults.get_header_map_pairs = (map) => (map === MapType.RequestHeaders ? Status.BadArgument : undefined);
  h.faults.set_property = () => Status.BadArgument;
  const s = h.request(headers("u-1", [["x-augur-stack", "new"]]));
  assert.equal(s.action, 0);
  assert.ok(logged(h, "cannot read request headers: Host(2)"), JSON.stringify(h.logs));
  assert.ok(logged(h, "cannot store decision record: Host(2)"));
  // Without headers it still routes (anonymous: the old stack) and says so upstream.
  assert.equal(s.upstream.get("x-augur-stack"), "old");
  h.respond(s, [[":status", "200"]]);

  h.faults = { get_header_map_pairs: () => "malformed" };
  const m = h.request(headers("u-2"));
  assert.equal(m.action, 0);
  assert.ok(logged(h, "cannot read request headers: MalformedMap"));
  h.faults = { replace_header: () => Status.BadArgument };
  const r = h.request(headers("u-3"));
  assert.equal(r.action, 0);
  assert.ok(logged(h, "cannot set request header x-augur-stack: Host(2)"));
  h.faults = {};
  // And the VM is alive: the next request is decided normally.
  const ok = h.request(headers("u-4"));
  assert.ok(["old", "new"].includes(ok.upstream.get("x-augur-stack")));
  assert.match(JSON.parse(ok.record).id, /^[0-9a-f]{16}$/);
});

test("a stat the host will not define is logged; the configuration still serves", () => {
  const h = new Host();
  h.faults.define_metric = (_type, name) => (name.startsWith("augur_spoofed") ? Status.BadArgument : undefined);
  assert.equal(h.start(DEMO), true);
  assert.ok(logged(h, "cannot define stat augur_spoofed_requests_total.rollout.demo: Host(2)"));
  const s = h.request(headers("u-1", [["x-augur-stack", "new"]]));
  assert.equal(s.upstream.get("x-augur-stack"), JSON.parse(s.record).stack, "the forged header was replaced");
  h.respond(s, [[":status", "200"]]);
  h.tick(1000);
  assert.equal(requestsTotal(h, "new") + requestsTotal(h, "old"), 1n);
});

function rollbackKey(h) {
  const keys = [...h.shared.keys()].filter((k) => !k.startsWith("augur.control_header_prefix"));
  assert.equal(keys.length, 1, JSON.stringify([...h.shared.keys()]));
  return keys[0];
}

function traffic(h, n, from = 0) {
  for (let i = from; i < from + n; i++) h.respond(h.request(headers(`u-${i}`)), [[":status", "200"]]);
}

test("a lost compare-and-swap race is retried; a contended sync waits for the next tick", () => {
  const h = started();
  traffic(h, 30);
  h.tick(1000); // the first sync writes the rollout's rollback state
  const key = rollbackKey(h);
  const written = h.shared.get(key).cas;
  assert.equal(h.metric("augur_exploring_cells.rollout.demo"), 0n, "the gauge is set at every sync");

  // Another worker wrote between our read and our write, once: read again, write again.
  let lost = 1;
  h.faults.set_shared_data = (k) => (k === key && lost-- > 0 ? Status.CasMismatch : undefined);
  traffic(h, 30, 30);
  h.calls = [];
  h.tick(1000);
  const sets = h.calls.filter(([c, k]) => c === "set_shared_data" && k === key);
  assert.equal(sets.length, 2, JSON.stringify(sets));
  assert.equal(h.shared.get(key).cas, written + 1);
  assert.equal(logged(h, "stayed contended"), false);

  // Always contended: logged, nothing lost, and the next tick merges it.
  h.faults.set_shared_data = (k) => (k === key ? Status.CasMismatch : undefined);
  traffic(h, 30, 60);
  h.tick(1000);
  assert.ok(logged(h, "rollback: shared data stayed contended; will retry on the next tick"));
  assert.equal(h.shared.get(key).cas, written + 1);
  h.faults = {};
  h.tick(1000);
  assert.equal(h.shared.get(key).cas, written + 2);
});

test("a replaced configuration hands over its batched stats when its last stream ends", () => {
  const h = started();
  traffic(h, 5);
  assert.equal(requestsTotal(h, "new") + requestsTotal(h, "old"), 0n, "batched until the flush");
  const inFlight = h.request(headers("u-9"));
  const pushed = structuredClone(DEMO);
  pushed.model.version = "default-v1-pushed";
  assert.equal(h.configure(pushed), true);
  assert.equal(requestsTotal(h, "new") + requestsTotal(h, "old"), 0n, "the old configuration still has a stream");
  h.calls = [];
  h.respond(inFlight, [[":status", "200"]]);
  assert.equal(requestsTotal(h, "new") + requestsTotal(h, "old"), 6n);
  assert.ok(h.calls.some(([c, k]) => c === "set_shared_data" && !k.startsWith("augur.control_header_prefix")),
    "the outcomes counted since the last sync go to shared data");
});

test("a refused push names the field and keeps the running configuration", () => {
  const h = started();
  const bad = structuredClone(DEMO);
  bad.rollout.percentage = 140;
  assert.equal(h.configure(bad), false);
  assert.ok(h.logs.some(([level, m]) => level === 4 && m.startsWith("configuration refused: rollout.percentage")),
    JSON.stringify(h.logs.slice(-3)));
  const moved = structuredClone(DEMO);
  moved.control_header_prefix = "x-other-";
  assert.equal(h.configure(moved), false);
  assert.ok(logged(h, "control_header_prefix"));
  const s = h.request(headers("u-1", [["x-augur-stack", "new"]]));
  assert.ok(["old", "new"].includes(s.upstream.get("x-augur-stack")));
  assert.equal(s.upstream.has("x-other-stack"), false);
});

test("header bytes that are not UTF-8 are not a trap", () => {
  const h = started();
  const s = h.request(headers("caf\xe9").map(([k, v]) => [k, k === "x-user-id" ? new Uint8Array([0x63, 0xe9, 0xff]) : v]));
  assert.equal(s.action, 0);
  assert.ok(JSON.parse(s.record).stack);
  h.respond(s, [[":status", "200"]]);
});
