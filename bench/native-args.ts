// Host cost of a native call's option parsing: lseMerge on 1 row of 8 (no real work), the options object reused
// or made fresh per call. What every kernel entry point pays before its work or launch.
// Usage: node dist/bench/native-args.js
import { native } from '../src/native.js';

const D = 8;
const f = (n: number) => new Float32Array(n);
const o = { rows: 1, headDim: D, oA: f(D), lseA: f(1), oB: f(D), lseB: f(1), out: f(D), lseOut: f(1) };

function bench(label: string, make: () => typeof o): void {
  for (let i = 0; i < 20_000; i++) native().lseMerge(make());
  const n = 300_000;
  let best = Infinity;
  for (let r = 0; r < 5; r++) {
    const t0 = process.hrtime.bigint();
    for (let i = 0; i < n; i++) native().lseMerge(make());
    best = Math.min(best, Number(process.hrtime.bigint() - t0) / n);
  }
  console.log(`${label.padEnd(36)} ${best.toFixed(0)} ns/call`);
}

bench('lseMerge, options object reused', () => o);
bench('lseMerge, a fresh options object', () => ({ ...o }));
