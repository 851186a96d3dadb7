// Cargo runner for wasm32-wasip1 test binaries: runs the module under Node's WASI
// (preview1) and exits with its code. The proxy-wasm host ABI (module "env") is not
// available outside Envoy: its imports are stubbed with functions that throw, so the pure
// logic under test runs and any accidental host call fails loudly.
import { WASI } from 'node:wasi';
import { readFile } from 'node:fs/promises';
import process from 'node:process';

const [, , wasmPath, ...args] = process.argv;
const wasi = new WASI({
  version: 'preview1',
  args: [wasmPath, ...args],
  env: process.env,
  preopens: { '/': '/' },
  returnOnExit: true,
});
const module = await WebAssembly.compile(await readFile(wasmPath));
const imports = wasi.getImportObject();
for (const imp of WebAssembly.Module.imports(module)) {
  if (imp.module === 'wasi_snapshot_preview1') continue;
  imports[imp.module] ??= {};
  imports[imp.module][imp.name] = () => {
    throw new Error(`host call ${imp.module}.${imp.name} is not available in unit tests`);
  };
}
const instance = await WebAssembly.instantiate(module, imports);
// A filter crate's test binary also carries the proxy-wasm reactor entry (`_initialize`);
// WASI.start wants a command module, so hand it only what a command exports.
const { memory, _start } = instance.exports;
process.exitCode = wasi.start({ exports: { memory, _start } });
