// Runs a wasm32-wasip1 command module under Node's V8 (the engine Envoy embeds),
// for `make bench-vm`. The library also carries the proxy-wasm glue: its host
// imports are stubbed (never called by the benchmark) and its `_initialize`
// export is hidden from WASI, which refuses modules that have both.
//
//     node --no-liftoff benches/support/run_wasi.mjs target/.../vm_bench.wasm
import { readFile } from 'node:fs/promises';
import { WASI } from 'node:wasi';

const wasi = new WASI({ version: 'preview1', args: [], env: {} });
const module = await WebAssembly.compile(await readFile(process.argv[2]));
const imports = { ...wasi.getImportObject() };
for (const imp of WebAssembly.Module.imports(module)) {
  imports[imp.module] ??= {};
  if (imp.kind === 'function' && !(imp.name in imports[imp.module])) {
    imports[imp.module][imp.name] = () => { throw new Error(`host call ${imp.name} in a benchmark`); };
  }
}
const instance = await WebAssembly.instantiate(module, imports);
wasi.start({ exports: { memory: instance.exports.memory, _start: instance.exports._start } });
