// CUDA kernel bench: the zero-copy KV gather against bulk pinned H2D, and the bf16 GEMV against device copy, measured in one run.
// Usage (GPU machine): npx tsc -p tsconfig.json && node dist/bench/cuda-kernels.js [--json] [--quick]
//
// Conventions (DESIGN §7):
// - H2D / D2H GB/s = bytes copied / s (cudaMemcpyAsync between a cudaHostRegister'd host arena and a device arena).
// - Device copy GB/s counts read + write: 2 x bytes copied / s (cudaMemcpyAsync D2D), as DESIGN §7's 2.6 TB/s does.
// - Gather GB/s = K+V bytes landed in device memory / s (each also crossed PCIe once); ratio = / bulk H2D GB/s; target >= 0.8.
// - GEMV GB/s = bytes read (W bf16 + x f32) plus y written / s; ratio = / device-copy read+write GB/s; target >= 0.7.
// Every time is GPU time between events on one stream. The stream is first held behind a queue of device copies on
// another stream, so every rep is enqueued before the GPU starts and no rep waits for the CPU.
import { randomFillSync } from 'node:crypto';
import os from 'node:os';
import { HostArena } from '../src/arena.js';
import { f32ToBf16 } from '../src/kernels/half.js';
import { gemvBf16AbsRef, gemvBf16Ref } from '../src/kernels/gemv.js';
import { blockBytes, gatherRef, type PagedShape } from '../src/kernels/paged-kv.js';
import { randn } from '../src/model/random-model.js';
import { seededRandom } from '../src/engine/sampling.js';
import { native, type KvRegion } from '../src/native.js';
import { DevArena, Timer } from './cuda-timing.js';
import { MiB, gbPerS, median } from './memcpy.js';

const GATHER_TARGET = 0.8;
const GEMV_TARGET = 0.7;
const NUM_KV_HEADS = 8;
const BLOCK_SIZE = 16;
const HOT_TOKENS = 64; // tokens per KV head a decode step fetches per layer at the default k (DESIGN §2)
const GEMV_SHAPES: [number, number][] = [[4096, 4096], [14336, 4096], [4096, 14336], [128256, 4096]];

interface Sizes {
  hostKvBytes: number; // the gather's source: a large pinned host KV
  bulkBytes: number; // H2D / D2H reference copies
  d2dBytes: number; // device copy reference
  gatherCallBytes: number; // K+V bytes per large gather call
  reps: number;
}

function sizes(quick: boolean): Sizes {
  return quick
    ? { hostKvBytes: 256 * MiB, bulkBytes: 64 * MiB, d2dBytes: 128 * MiB, gatherCallBytes: 16 * MiB, reps: 5 }
    : { hostKvBytes: 1024 * MiB, bulkBytes: 256 * MiB, d2dBytes: 512 * MiB, gatherCallBytes: 64 * MiB, reps: 10 };
}

// ---- Reference bandwidths ----

interface CopyRow {
  what: string;
  bytes: number;
  medianMs: number;
  gbPerS: number; // bytes copied / s; for the device copy, read + write (2x)
}

async function copyRows(t: Timer, s: Sizes, bulk: HostArena, dev: DevArena): Promise<{ h2d: CopyRow; d2h: CopyRow; d2d: CopyRow }> {
  const half = s.d2dBytes;
  // Device copy first, ungated (its enqueue costs microseconds against copies of ~0.4 ms): it calibrates the gate.
  const d2dMs = median(await t.time(s.reps, 2, () => native().cudaCopyD2D({ src: dev.ref(0), dst: dev.ref(half), bytes: half, stream: t.stream })));
  t.copyMs = d2dMs;
  const d2d = { what: 'device copy (D2D, read + write)', bytes: half, medianMs: d2dMs, gbPerS: 2 * gbPerS(half, d2dMs) };
  const copy = (toDevice: boolean) => () => {
    const o = { hostHandle: bulk.handle, hostOffset: 0, devHandle: dev.handle, devOffset: 0, bytes: s.bulkBytes, stream: t.stream };
    if (toDevice) native().cudaCopyH2D(o);
    else native().cudaCopyD2H(o);
  };
  const h2dMs = median(await t.time(s.reps, 2, copy(true)));
  const d2hMs = median(await t.time(s.reps, 2, copy(false)));
  return {
    h2d: { what: 'pinned H2D (cudaHostRegister arena)', bytes: s.bulkBytes, medianMs: h2dMs, gbPerS: gbPerS(s.bulkBytes, h2dMs) },
    d2h: { what: 'pinned D2H (cudaHostRegister arena)', bytes: s.bulkBytes, medianMs: d2hMs, gbPerS: gbPerS(s.bulkBytes, d2hMs) },
    d2d,
  };
}

// ---- Gather ----

interface GatherRow {
  headDim: number;
  unitTokens: number;
  unitBytes: number; // contiguous bytes per fetched unit
  call: 'bulk' | 'hot-set';
  units: number; // per call
  bytes: number; // K+V bytes per call
  medianMs: number;
  gbPerS: number;
  ratioToH2D: number;
}

/** The region shape that fills the host KV arena at one head_dim. */
function kvShape(hostKvBytes: number, headDim: number): PagedShape {
  const perBlock = blockBytes({ numKvHeads: NUM_KV_HEADS, blockSize: BLOCK_SIZE, headDim });
  return { numBlocks: Math.floor(hostKvBytes / perBlock), numKvHeads: NUM_KV_HEADS, headDim, blockSize: BLOCK_SIZE, dtype: 'bf16' };
}

/** [NUM_KV_HEADS, n] positions: units of u consecutive tokens at random (block, aligned offset) over the whole cache. */
function randomUnits(n: number, u: number, numBlocks: number, r: () => number): Int32Array {
  const out = new Int32Array(NUM_KV_HEADS * n);
  for (let i = 0; i < out.length; i += u) {
    const p = Math.floor(r() * numBlocks) * BLOCK_SIZE + Math.floor(r() * (BLOCK_SIZE / u)) * u;
    for (let j = 0; j < u; j++) out[i + j] = p + j;
  }
  return out;
}

async function gatherRow(t: Timer, s: Sizes, kv: HostArena, dst: DevArena, h2d: number, headDim: number, u: number, call: 'bulk' | 'hot-set'): Promise<GatherRow> {
  const shape = kvShape(s.hostKvBytes, headDim);
  const region: KvRegion = { handle: kv.handle, offset: 0, ...shape };
  const r = seededRandom(headDim * 100 + u);
  const blockIds = Int32Array.from({ length: shape.numBlocks }, (_, i) => i); // identity: positions are already random blocks
  const unitBytes = u * 4 * headDim;
  const n = call === 'bulk' ? (s.gatherCallBytes / unitBytes / NUM_KV_HEADS) * u : HOT_TOKENS;
  // Hot-set calls are tiny: more reps, but fewer than the 64 index staging slots, or enqueueing would wait on the GPU.
  const reps = call === 'bulk' ? s.reps : 5 * s.reps;
  const warmup = 2;
  // A fresh position set per rep: repeating one would let L2 serve the second pass.
  const sets = Array.from({ length: warmup + reps }, () => randomUnits(n, u, shape.numBlocks, r));
  const kvHeads = Int32Array.from({ length: NUM_KV_HEADS }, (_, i) => i);
  const ms = await t.time(reps, warmup, (i) => {
    native().cudaKvGather({ ...region, blockIds, kvHeads, n, positions: sets[i], unitTokens: u, dst: dst.ref(0), stream: t.stream });
  });
  const bytes = NUM_KV_HEADS * n * 4 * headDim;
  const med = median(ms);
  const gb = gbPerS(bytes, med);
  return { headDim, unitTokens: u, unitBytes, call, units: (NUM_KV_HEADS * n) / u, bytes, medianMs: med, gbPerS: gb, ratioToH2D: gb / h2d };
}

// ---- GEMV ----

interface GemvRow {
  rows: number;
  cols: number;
  bytes: number; // W + x read, y written
  medianMs: number;
  gbPerS: number;
  ratioToD2D: number;
}

async function gemvRow(t: Timer, s: Sizes, w: DevArena, io: DevArena, d2d: number, rows: number, cols: number): Promise<GemvRow> {
  const wBytes = rows * cols * 2;
  // Cycle through distinct copies of W so that no rep finds W in the 50 MB L2.
  const slot = Math.ceil(wBytes / 4096) * 4096;
  const copies = Math.max(1, Math.floor(w.bytes / slot));
  const reps = wBytes < 256 * MiB ? 5 * s.reps : s.reps;
  const ms = await t.time(reps, 2, (i) =>
    native().cudaGemvBf16({ w: w.ref((i % copies) * slot), rows, cols, x: io.ref(0), y: io.ref(64 * 1024), stream: t.stream }));
  const bytes = wBytes + cols * 4 + rows * 4;
  const med = median(ms);
  const gb = gbPerS(bytes, med);
  return { rows, cols, bytes, medianMs: med, gbPerS: gb, ratioToD2D: gb / d2d };
}

// ---- Correctness first (llm.c): small cases against the TypeScript references ----

async function check(kv: HostArena, dst: DevArena, w: DevArena, io: DevArena, s: Sizes): Promise<string[]> {
  const notes: string[] = [];
  const r = seededRandom(42);
  const shape = kvShape(s.hostKvBytes, 128);
  const image = new Uint16Array(kv.read(0, 64 * blockBytes(shape)).buffer); // the first 64 blocks
  const blockIds = Int32Array.from({ length: 64 }, (_, i) => 63 - i);
  const kvHeads = Int32Array.of(5, 2);
  const positions = randomUnits(32, 2, 64, r).subarray(0, 2 * 32);
  const want = gatherRef({ ...shape, numBlocks: 64 }, image, blockIds, kvHeads, 32, positions);
  native().cudaKvGather({ handle: kv.handle, offset: 0, ...shape, blockIds, kvHeads, n: 32, positions, unitTokens: 2, dst: dst.ref(0) });
  await native().cudaStreamSynchronize({});
  const got = native().cudaArenaRead({ handle: dst.handle, offset: 0, bytes: want.byteLength });
  if (Buffer.compare(Buffer.from(got), Buffer.from(want.buffer)) !== 0) throw new Error('cudaKvGather differs from gatherRef: fix it before timing');
  notes.push('cudaKvGather equals gatherRef (head_dim 128, unitTokens 2)');

  const [rows, cols] = [1000, 4096];
  const wv = Uint16Array.from(randn(rows * cols, r), (v) => f32ToBf16(v));
  const x = randn(cols, r);
  native().cudaArenaWrite({ handle: w.handle, offset: 0, data: new Uint8Array(wv.buffer) });
  native().cudaArenaWrite({ handle: io.handle, offset: 0, data: new Uint8Array(x.buffer) });
  native().cudaGemvBf16({ w: w.ref(0), rows, cols, x: io.ref(0), y: io.ref(64 * 1024) });
  await native().cudaStreamSynchronize({});
  const y = new Float32Array(native().cudaArenaRead({ handle: io.handle, offset: 64 * 1024, bytes: rows * 4 }).slice().buffer);
  const ref = gemvBf16Ref(wv, rows, cols, x), scale = gemvBf16AbsRef(wv, rows, cols, x);
  for (let i = 0; i < rows; i++)
    if (Math.abs(y[i] - ref[i]) > 1e-5 * scale[i]) throw new Error(`cudaGemvBf16 row ${i}: ${y[i]} vs reference ${ref[i]}: fix it before timing`);
  notes.push(`cudaGemvBf16 equals gemvBf16Ref within f32 rounding (${rows} x ${cols})`);
  return notes;
}

// ---- Setup and output ----

function fillRandom(a: HostArena, bytes: number): void {
  const chunk = Buffer.alloc(64 * MiB);
  for (let off = 0; off < bytes; off += chunk.length) {
    randomFillSync(chunk);
    a.write(off, chunk.subarray(0, Math.min(chunk.length, bytes - off)));
  }
}

/** Fills `w` with finite bf16 values (a repeated block of N(0,1) samples) through H2D copies of `bulk`. */
async function fillWeights(w: DevArena, bulk: HostArena, bulkBytes: number): Promise<void> {
  const pattern = Uint16Array.from(randn(MiB / 2, seededRandom(7)), (v) => f32ToBf16(v)); // 1 MiB
  for (let off = 0; off < bulkBytes; off += MiB) bulk.write(off, pattern);
  for (let off = 0; off < w.bytes; off += bulkBytes)
    native().cudaCopyH2D({ hostHandle: bulk.handle, hostOffset: 0, devHandle: w.handle, devOffset: off, bytes: Math.min(bulkBytes, w.bytes - off) });
  await native().cudaStreamSynchronize({});
}

function fmt(x: number, digits = 2): string {
  return x.toFixed(digits);
}

function table(head: string[], rows: (string | number)[][]): string {
  const cells = [head, ...rows.map((r) => r.map(String))];
  const width = head.map((_, c) => Math.max(...cells.map((r) => r[c].length)));
  return cells.map((r) => r.map((v, c) => v.padStart(width[c])).join('  ')).join('\n');
}

async function main(): Promise<void> {
  const json = process.argv.includes('--json');
  const quick = process.argv.includes('--quick');
  const info = native().buildInfo().cuda;
  if (info.deviceCount === 0) {
    const reason = `${info.built ? 'no usable GPU' : 'CUDA not built'}: ${info.reason}`;
    if (json) console.log(JSON.stringify({ error: reason }));
    else console.error(`cuda-kernels bench: ${reason}`);
    process.exitCode = 1;
    return;
  }
  const s = sizes(quick);
  const log = (msg: string) => { if (!json) console.error(msg); };
  log(`GPU ${info.deviceName}; allocating ${s.hostKvBytes / MiB} MiB of pinned host KV...`);
  using kv = new HostArena(s.hostKvBytes);
  using bulk = new HostArena(s.bulkBytes);
  if (kv.method !== 'cudaHostRegister') throw new Error(`the host KV arena is pinned by ${kv.method}, not cudaHostRegister: the gather cannot map it`);
  fillRandom(kv, s.hostKvBytes);
  const maxW = Math.max(...GEMV_SHAPES.map(([n, k]) => n * k * 2));
  using dev = new DevArena(2 * s.d2dBytes);
  using dst = new DevArena(s.gatherCallBytes);
  using w = new DevArena(Math.max(maxW, 1024 * MiB));
  using io = new DevArena(2 * 64 * 1024 + 128256 * 4);
  await fillWeights(w, bulk, s.bulkBytes);
  native().cudaArenaWrite({ handle: io.handle, offset: 0, data: new Uint8Array(randn(14336, seededRandom(8)).buffer) });

  const notes = await check(kv, dst, w, io, s);
  await fillWeights(w, bulk, s.bulkBytes); // check() overwrote the start of W
  native().cudaArenaWrite({ handle: io.handle, offset: 0, data: new Uint8Array(randn(14336, seededRandom(8)).buffer) });
  const t = new Timer(dev, s.d2dBytes);
  const ref = await copyRows(t, s, bulk, dev);
  const hostAlloc = await native().cudaBandwidth({ bytes: s.bulkBytes, iterations: 5 });

  const gather: GatherRow[] = [];
  // An untimed first pass allocates the index staging slots the timed passes reuse (the largest tables come first).
  await gatherRow(t, s, kv, dst, ref.h2d.gbPerS, 64, 1, 'bulk');
  for (const headDim of [64, 128])
    for (const u of [1, 2, 4]) {
      log(`gather head_dim ${headDim} unitTokens ${u}...`);
      gather.push(await gatherRow(t, s, kv, dst, ref.h2d.gbPerS, headDim, u, 'bulk'));
    }
  for (const headDim of [64, 128]) gather.push(await gatherRow(t, s, kv, dst, ref.h2d.gbPerS, headDim, 1, 'hot-set'));

  const gemv: GemvRow[] = [];
  for (const [rows, cols] of GEMV_SHAPES) {
    log(`gemv ${rows} x ${cols}...`);
    gemv.push(await gemvRow(t, s, w, io, ref.d2d.gbPerS, rows, cols));
  }
  t.dispose();

  const result = {
    machine: { gpu: info.deviceName, driverVersion: info.driverVersion, runtimeVersion: info.runtimeVersion, cpu: os.cpus()[0]?.model ?? 'unknown', node: process.version },
    quick,
    conventions: {
      copyGbPerS: 'bytes copied / s',
      deviceCopy: 'read + write: 2 x bytes copied / s (DESIGN §7)',
      gather: 'K+V bytes landed / s; ratio to pinned H2D',
      gemv: 'W + x bytes read and y written / s; ratio to device copy read + write',
    },
    targets: { gatherRatioToH2D: GATHER_TARGET, gemvRatioToDeviceCopy: GEMV_TARGET },
    hostKv: { bytes: s.hostKvBytes, numKvHeads: NUM_KV_HEADS, blockSize: BLOCK_SIZE, positions: 'random blocks over the whole cache, random unit-aligned offset' },
    reference: { ...ref, cudaHostAllocH2dGbPerS: hostAlloc.h2dGbPerS, cudaHostAllocD2hGbPerS: hostAlloc.d2hGbPerS },
    gather,
    gemv,
    checks: notes,
  };
  if (json) {
    console.log(JSON.stringify(result, null, 2));
    return;
  }
  console.log(`GPU ${info.deviceName} (driver ${info.driverVersion}, runtime ${info.runtimeVersion}); ${notes.join('; ')}${quick ? '; --quick sizes' : ''}\n`);
  console.log(table(['reference', 'MiB', 'median ms', 'GB/s'], [ref.h2d, ref.d2h, ref.d2d].map((c) => [c.what, fmt(c.bytes / MiB, 0), fmt(c.medianMs, 3), fmt(c.gbPerS, 1)])));
  console.log(`(cudaBandwidth, cudaHostAlloc buffers: H2D ${fmt(hostAlloc.h2dGbPerS, 1)} GB/s, D2H ${fmt(hostAlloc.d2hGbPerS, 1)} GB/s)\n`);
  console.log(`gather: ${NUM_KV_HEADS} KV heads, block ${BLOCK_SIZE}, random positions over ${s.hostKvBytes / MiB} MiB of pinned host KV; ratio to pinned H2D, target >= ${GATHER_TARGET}`);
  console.log(table(['head_dim', 'unitTokens', 'unit B', 'call', 'units', 'KiB/call', 'median ms', 'GB/s', 'ratio', 'meets'],
    gather.map((g) => [g.headDim, g.unitTokens, g.unitBytes, g.call, g.units, fmt(g.bytes / 1024, 0), fmt(g.medianMs, 4), fmt(g.gbPerS, 1), fmt(g.ratioToH2D), g.ratioToH2D >= GATHER_TARGET ? 'yes' : 'no'])));
  console.log(`\ngemv bf16 (x, y f32): ratio to device copy read + write (${fmt(ref.d2d.gbPerS, 0)} GB/s), target >= ${GEMV_TARGET}`);
  console.log(table(['rows x cols', 'MiB', 'median ms', 'GB/s', 'ratio', 'meets'],
    gemv.map((g) => [`${g.rows} x ${g.cols}`, fmt(g.bytes / MiB, 1), fmt(g.medianMs, 4), fmt(g.gbPerS, 0), fmt(g.ratioToD2D), g.ratioToD2D >= GEMV_TARGET ? 'yes' : 'no'])));
}

await main();
