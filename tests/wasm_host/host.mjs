// A small proxy-wasm 0.2.1 host in Node's V8 (the engine Envoy runs the filter
// in), for deterministic tests of the *built* module's host calls: the tier
// between the native tests (pure logic, host behind a trait) and real Envoy.
// Envoy never answers a call with an error, a CAS mismatch or a malformed
// header map on demand; this host does (`host.faults`), so src/abi.rs and the
// adapter (src/filter.rs) are tested for what they do then.
//
// Only what augur imports is implemented; every other import returns
// Status::Unimplemented (12). Calls are recorded in `host.calls`.

import { readFileSync } from "node:fs";

export const Status = { Ok: 0, NotFound: 1, BadArgument: 2, CasMismatch: 8, Unimplemented: 12 };
export const MapType = { RequestHeaders: 0, ResponseHeaders: 2 };
const BufferType = { VmConfiguration: 6, PluginConfiguration: 7 };

const utf8 = new TextEncoder();
const text = new TextDecoder("utf-8", { fatal: false });

/** The proxy-wasm header-map serialisation: u32 count, (u32 name len, u32 value len)*, then NUL-terminated names and values. */
export function serializePairs(pairs) {
  const enc = pairs.map(([k, v]) => [utf8.encode(k), typeof v === "string" ? utf8.encode(v) : v]);
  const size = 4 + enc.length * 8 + enc.reduce((n, [k, v]) => n + k.length + 1 + v.length + 1, 0);
  const out = new Uint8Array(size);
  const dv = new DataView(out.buffer);
  dv.setUint32(0, enc.length, true);
  let off = 4;
  for (const [k, v] of enc) {
    dv.setUint32(off, k.length, true);
    dv.setUint32(off + 4, v.length, true);
    off += 8;
  }
  for (const [k, v] of enc) {
    out.set(k, off);
    off += k.length + 1;
    out.set(v, off);
    off += v.length + 1;
  }
  return out;
}

export class Host {
  /** `wasm`: path of the module (default: AUGUR_WASM or target/augur.wasm). */
  constructor(wasm = process.env.AUGUR_WASM || new URL("../../target/augur.wasm", import.meta.url)) {
    this.module = new WebAssembly.Module(readFileSync(wasm));
    this.now = 1_700_000_000_000_000_000n; // ns
    this.logs = [];
    this.calls = [];
    this.metrics = new Map(); // id -> {type, name, value}
    this.shared = new Map(); // key -> {value: Uint8Array, cas}
    this.properties = new Map(); // path (joined by '.') -> string
    this.maps = new Map([[MapType.RequestHeaders, []], [MapType.ResponseHeaders, []]]);
    this.tickPeriod = 0;
    // Fault injection, each a function of the call's arguments returning a status (or undefined: normal).
    this.faults = {};
    this.nextContext = 1;
    this.pluginConfig = new Uint8Array();
    const env = {};
    for (const imp of WebAssembly.Module.imports(this.module)) {
      if (imp.module === "env") env[imp.name] = () => Status.Unimplemented;
    }
    Object.assign(env, this.#env());
    this.instance = new WebAssembly.Instance(this.module, { env, wasi_snapshot_preview1: this.#wasi() });
    this.x = this.instance.exports;
    this.x._initialize();
  }

  // -- memory -----------------------------------------------------------------
  get mem() {
    return new Uint8Array(this.x.memory.buffer);
  }
  get dv() {
    return new DataView(this.x.memory.buffer);
  }
  str(ptr, len) {
    return text.decode(this.mem.slice(ptr, ptr + len));
  }
  bytes(ptr, len) {
    return this.mem.slice(ptr, ptr + len);
  }
  /** Hands `data` to the module the way a host does: memory it allocates, pointer and size at the return slots. */
  give(data, retPtr, retSize) {
    const bytes = typeof data === "string" ? utf8.encode(data) : data;
    const ptr = bytes.length ? this.x.proxy_on_memory_allocate(bytes.length) : 0;
    if (bytes.length) this.mem.set(bytes, ptr);
    this.dv.setUint32(retPtr, ptr, true);
    this.dv.setUint32(retSize, bytes.length, true);
    return Status.Ok;
  }
  fault(name, ...args) {
    const f = this.faults[name];
    return f ? f(...args) : undefined;
  }
  record(name, ...args) {
    this.calls.push([name, ...args]);
  }

  #env() {
    const h = this;
    return {
      proxy_log(level, ptr, len) {
        h.logs.push([level, h.str(ptr, len)]);
        return Status.Ok;
      },
      proxy_get_current_time_nanoseconds(ret) {
        h.dv.setBigUint64(ret, h.now, true);
        return Status.Ok;
      },
      proxy_set_tick_period_milliseconds(ms) {
        h.tickPeriod = ms;
        return Status.Ok;
      },
      proxy_get_buffer_bytes(type, start, max, retPtr, retSize) {
        max >>>= 0; // an unsigned u32 (the SDK asks for usize::MAX)
        const data = type === BufferType.PluginConfiguration ? h.pluginConfig : new Uint8Array();
        if (type !== BufferType.PluginConfiguration && type !== BufferType.VmConfiguration) return Status.NotFound;
        return h.give(data.slice(start, start + max), retPtr, retSize);
      },
      proxy_get_header_map_pairs(map, retPtr, retSize) {
        h.record("get_header_map_pairs", map);
        const s = h.fault("get_header_map_pairs", map);
        if (s === "malformed") return h.give(new Uint8Array([9, 0, 0, 0, 1, 0]), retPtr, retSize);
        if (s !== undefined) return s;
        return h.give(serializePairs(h.maps.get(map) ?? []), retPtr, retSize);
      },
      proxy_get_header_map_value(map, kp, kl, retPtr, retSize) {
        const k = h.str(kp, kl);
        const pair = (h.maps.get(map) ?? []).find(([n]) => n === k);
        return pair ? h.give(pair[1], retPtr, retSize) : Status.NotFound;
      },
      proxy_replace_header_map_value(map, kp, kl, vp, vl) {
        const [k, v] = [h.str(kp, kl), h.str(vp, vl)];
        h.record("replace_header", map, k, v);
        const s = h.fault("replace_header", map, k, v);
        if (s !== undefined) return s;
        const m = (h.maps.get(map) ?? []).filter(([n]) => n !== k);
        m.push([k, v]);
        h.maps.set(map, m);
        return Status.Ok;
      },
      proxy_add_header_map_value(map, kp, kl, vp, vl) {
        const [k, v] = [h.str(kp, kl), h.str(vp, vl)];
        h.record("add_header", map, k, v);
        h.maps.get(map)?.push([k, v]);
        return Status.Ok;
      },
      proxy_remove_header_map_value(map, kp, kl) {
        const k = h.str(kp, kl);
        h.record("remove_header", map, k);
        const s = h.fault("remove_header", map, k);
        if (s !== undefined) return s;
        h.maps.set(map, (h.maps.get(map) ?? []).filter(([n]) => n !== k));
        return Status.Ok;
      },
      proxy_set_property(pp, pl, vp, vl) {
        const path = h.str(pp, pl).split("\0").filter(Boolean).join(".");
        const value = h.str(vp, vl);
        h.record("set_property", path, value);
        const s = h.fault("set_property", path, value);
        if (s !== undefined) return s;
        h.properties.set(path, value);
        return Status.Ok;
      },
      proxy_get_property(pp, pl, retPtr, retSize) {
        const path = h.str(pp, pl).split("\0").filter(Boolean).join(".");
        h.record("get_property", path);
        const v = h.properties.get(path);
        return v === undefined ? Status.NotFound : h.give(v, retPtr, retSize);
      },
      proxy_get_shared_data(kp, kl, retPtr, retSize, retCas) {
        const k = h.str(kp, kl);
        h.record("get_shared_data", k);
        const s = h.fault("get_shared_data", k);
        if (s !== undefined) return s;
        const e = h.shared.get(k);
        if (!e) return Status.NotFound;
        h.give(e.value, retPtr, retSize);
        h.dv.setUint32(retCas, e.cas, true);
        return Status.Ok;
      },
      proxy_set_shared_data(kp, kl, vp, vl, cas) {
        const k = h.str(kp, kl);
        h.record("set_shared_data", k, cas);
        const s = h.fault("set_shared_data", k, cas);
        if (s !== undefined) return s;
        const e = h.shared.get(k);
        if (cas !== 0 && e && e.cas !== cas) return Status.CasMismatch;
        h.shared.set(k, { value: h.bytes(vp, vl), cas: (e?.cas ?? 0) + 1 });
        return Status.Ok;
      },
      proxy_define_metric(type, np, nl, retId) {
        const name = h.str(np, nl);
        const s = h.fault("define_metric", type, name);
        if (s !== undefined) return s;
        const id = h.metrics.size + 1;
        h.metrics.set(id, { type, name, value: 0n });
        h.dv.setUint32(retId, id, true);
        return Status.Ok;
      },
      proxy_increment_metric(id, by) {
        const m = h.metrics.get(id);
        if (!m) return Status.NotFound;
        m.value += by;
        return Status.Ok;
      },
      proxy_record_metric(id, value) {
        const m = h.metrics.get(id);
        if (!m) return Status.NotFound;
        m.value = value;
        return Status.Ok;
      },
      proxy_done() {
        return Status.Ok;
      },
    };
  }

  #wasi() {
    const h = this;
    return {
      clock_time_get(_id, _precision, ret) {
        h.dv.setBigUint64(ret, h.now, true);
        return 0;
      },
      random_get(ptr, len) {
        // Deterministic: the tests must not depend on luck.
        for (let i = 0; i < len; i++) h.mem[ptr + i] = (i * 131 + 7) & 0xff;
        return 0;
      },
      environ_sizes_get(count, size) {
        h.dv.setUint32(count, 0, true);
        h.dv.setUint32(size, 0, true);
        return 0;
      },
      environ_get: () => 0,
      fd_write(_fd, iovs, n, ret) {
        let total = 0;
        for (let i = 0; i < n; i++) total += h.dv.getUint32(iovs + i * 8 + 4, true);
        h.dv.setUint32(ret, total, true);
        return 0;
      },
      proc_exit(code) {
        throw new Error(`proc_exit(${code})`);
      },
      sched_yield: () => 0,
      fd_close: () => 8,
      fd_fdstat_get: () => 8,
      fd_filestat_get: () => 8,
      fd_prestat_get: () => 8,
      fd_prestat_dir_name: () => 8,
      path_open: () => 8,
      path_readlink: () => 8,
    };
  }

  // -- the lifecycle Envoy drives ------------------------------------------------
  /** Starts the VM and a root context on `config` (an object or JSON text); returns the root id and whether on_configure accepted it. */
  start(config) {
    this.root = this.nextContext++;
    this.x.proxy_on_context_create(this.root, 0);
    this.x.proxy_on_vm_start(this.root, 0);
    return this.configure(config);
  }
  /** proxy_on_configure on the root context (a push): true when accepted. */
  configure(config) {
    this.pluginConfig = utf8.encode(typeof config === "string" ? config : JSON.stringify(config));
    return this.x.proxy_on_configure(this.root, this.pluginConfig.length) !== 0;
  }
  tick(ms = 1000) {
    this.now += BigInt(ms) * 1_000_000n;
    this.x.proxy_on_tick(this.root);
  }
  /** Opens a stream and runs its request headers: returns the stream (its id, its upstream request headers, the action). */
  request(headers) {
    const id = this.nextContext++;
    this.x.proxy_on_context_create(id, this.root);
    this.maps.set(MapType.RequestHeaders, headers.map(([k, v]) => [k, v]));
    this.properties.delete("augur_decision");
    const action = this.x.proxy_on_request_headers(id, headers.length, 1);
    return { id, action, upstream: new Map(this.maps.get(MapType.RequestHeaders)), record: this.properties.get("augur_decision") };
  }
  /** The response headers of stream `s`, then its end (done, log, delete), as Envoy calls them. */
  respond(s, headers, { latencyMs = 5 } = {}) {
    this.now += BigInt(latencyMs) * 1_000_000n;
    this.maps.set(MapType.ResponseHeaders, headers.map(([k, v]) => [k, v]));
    const action = this.x.proxy_on_response_headers(s.id, headers.length, 1);
    this.end(s);
    return { action, downstream: new Map(this.maps.get(MapType.ResponseHeaders)) };
  }
  end(s) {
    this.x.proxy_on_done(s.id);
    this.x.proxy_on_log(s.id);
    this.x.proxy_on_delete(s.id);
  }
  metric(name) {
    for (const m of this.metrics.values()) if (m.name === name) return m.value;
    return undefined;
  }
  metricNames() {
    return [...this.metrics.values()].map((m) => m.name);
  }
}

