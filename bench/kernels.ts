// Kernel bench: CPU attention, KIVI, top-k and LSE-merge throughput as ratios to host memcpy measured in the same run.
// Usage: npx tsc -p tsconfig.json && node dist/bench/kernels.js [--json] [--quick]
import { readFileSync, readdirSync } from 'node:fs';
import os from 'node:os';
import { performance } from 'node:perf_hooks';
import { isMainThread } from 'node:worker_threads';
import { HostArena } from '../src/arena.js';
import { f32ToF16 } from '../src/kernels/half.js';
import { native, type KvDtype, type SimdLevel } from '../src/native.js';
import {
  MiB, Team, copyResult, gbPerS, isTeamWorker, median, memcpyMultiThread, multiThreadBytes, serveTeam,
  singleThreadCopier, timeReps, type CopyBandwidth, type Timing,
} from './memcpy.js';

const TARGET_RATIO = 0.7; // DESIGN §7: CPU attention reads KV at >= 70% of host memcpy bandwidth
const NUM_KV_HEADS = 8;
const BLOCK_SIZE = 32;
const KIVI_GROUP = 32; // tokens per KIVI key group (per-channel quantization over 32 tokens)

interface Sizes {
  contexts: number[];
  copyBytes: number; // single-thread memcpy size
  mtMinTotal: number; // multi-thread memcpy: total and per-thread minimum
  mtMinPerThread: number;
  poolBytes: number; // KV bytes one timed rep walks through (several "layers" when one region is small)
  reps: number;
}

interface AttnConfig {
  groupSize: number;
  headDim: number;
  dtype: KvDtype;
  context: number;
}

// ---- Machine ----

function parseCacheSize(s: string): number {
  const m = /^(\d+)([KMG]?)/.exec(s.trim());
  if (!m) return 0;
  return Number(m[1]) * ({ '': 1, K: 1024, M: MiB, G: 1024 * MiB } as Record<string, number>)[m[2]];
}

/** L2 and last-level cache sizes of cpu0 as the OS reports them (null where it does not). */
function cacheSizes(): { l2: number | null; llc: number | null } {
  const dir = '/sys/devices/system/cpu/cpu0/cache';
  let l2: number | null = null, llc: number | null = null, llcLevel = 0;
  try {
    for (const idx of readdirSync(dir).filter((n) => n.startsWith('index'))) {
      const read = (f: string) => readFileSync(`${dir}/${idx}/${f}`, 'utf8').trim();
      if (read('type') === 'Instruction') continue;
      const level = Number(read('level'));
      const size = parseCacheSize(read('size'));
      if (level === 2) l2 = size;
      if (level >= llcLevel) [llc, llcLevel] = [size, level];
    }
  } catch {
    // not Linux, or no sysfs: sizes stay unknown
  }
  return { l2, llc };
}

function machineInfo(caches: { l2: number | null; llc: number | null }) {
  const b = native().buildInfo();
  return {
    cpu: os.cpus()[0]?.model ?? 'unknown',
    cores: os.cpus().length,
    availableParallelism: os.availableParallelism(),
    simd: b.simd,
    simdLevels: b.simdLevels,
    l2Bytes: caches.l2,
    llcBytes: caches.llc,
    memoryBytes: os.totalmem(),
    node: process.version,
  };
}

function chooseSizes(quick: boolean, llc: number | null): Sizes {
  if (quick) return { contexts: [2048, 8192], copyBytes: 64 * MiB, mtMinTotal: 64 * MiB, mtMinPerThread: 8 * MiB, poolBytes: 64 * MiB, reps: 5 };
  // Walk >= 2x the last-level cache per rep so the KV comes from DRAM, as it does in a decode step
  // (many layers, each read once); memcpy at 256 MiB streams from DRAM likewise.
  const want = Math.max(512 * MiB, 2 * (llc ?? 0));
  const poolBytes = Math.min(want, 1024 * MiB, Math.floor(os.freemem() / 4));
  return { contexts: [8192, 32768], copyBytes: 256 * MiB, mtMinTotal: 256 * MiB, mtMinPerThread: 32 * MiB, poolBytes, reps: 7 };
}

// ---- KV pool ----

function lcg(seed: number): () => number {
  let s = seed >>> 0;
  return () => (s = (Math.imul(s, 1664525) + 1013904223) >>> 0) / 4294967296;
}

function randomFloats(n: number, seed: number, amp = 1): Float32Array {
  const r = lcg(seed);
  return Float32Array.from({ length: n }, () => (r() * 2 - 1) * amp);
}

/**
 * 16-bit values that are normal and small in both dtypes (0x3c00..0x3cff with a random sign is
 * 1.0..1.25 as f16 and 0.008..0.03 as bf16), so one fill serves both and no path meets subnormals.
 */
function halfPattern(n: number): Uint16Array {
  const r = lcg(7);
  return Uint16Array.from({ length: n }, () => ((r() < 0.5 ? 0x8000 : 0) | 0x3c00 | Math.floor(r() * 256)) & 0xffff);
}

/** One arena holding all configs' regions; written through once so every page is touched before timing. */
function makePool(bytes: number): HostArena {
  const arena = new HostArena(bytes);
  const chunk = new Uint8Array(halfPattern(2 * MiB).buffer);
  for (let at = 0; at < bytes; at += chunk.length) arena.write(at, chunk.subarray(0, Math.min(chunk.length, bytes - at)));
  return arena;
}

interface Layout {
  numBlocks: number;
  regionBytes: number; // one layer's region = bytes of K+V rows one full-context attend touches
  offsets: number[]; // one region per "layer"; a rep attends each once
  blockIds: Int32Array;
}

function regionBytes(c: AttnConfig): number {
  return (c.context / BLOCK_SIZE) * NUM_KV_HEADS * BLOCK_SIZE * 2 * c.headDim * 2;
}

function layersFor(c: AttnConfig, poolBytes: number): number {
  return Math.max(1, Math.ceil(poolBytes / regionBytes(c)));
}

/** Block ids in shuffled order by default: a paged pool hands out scattered blocks, which defeats plain stream prefetch. */
function layout(c: AttnConfig, poolBytes: number, order: 'shuffled' | 'in order' = 'shuffled'): Layout {
  const numBlocks = c.context / BLOCK_SIZE;
  const rb = regionBytes(c);
  const offsets = Array.from({ length: layersFor(c, poolBytes) }, (_, i) => i * rb);
  const blockIds = Int32Array.from({ length: numBlocks }, (_, i) => i);
  if (order === 'shuffled') {
    const r = lcg(11);
    for (let i = numBlocks - 1; i > 0; i--) {
      const j = Math.floor(r() * (i + 1));
      [blockIds[i], blockIds[j]] = [blockIds[j], blockIds[i]];
    }
  }
  return { numBlocks, regionBytes: rb, offsets, blockIds };
}

// ---- Attention ----

interface StepSpec {
  handle: number;
  numBlocks: number;
  headDim: number;
  dtype: KvDtype;
  groupSize: number;
  offsets: number[];
  blockIds: Int32Array; // the logical blocks this caller attends (all, or one thread's range)
  seed: number;
}

/** One decode step's CPU attention over every layer: all KV heads in one kvAttend call per layer. */
function attentionStep(s: StepSpec): () => void {
  const rows = NUM_KV_HEADS * s.groupSize;
  const q = randomFloats(rows * s.headDim, s.seed, 0.5);
  const out = new Float32Array(q.length);
  const lse = new Float32Array(rows);
  const kvHeads = Int32Array.from({ length: NUM_KV_HEADS }, (_, i) => i);
  const region = { handle: s.handle, numBlocks: s.numBlocks, numKvHeads: NUM_KV_HEADS, headDim: s.headDim, blockSize: BLOCK_SIZE, dtype: s.dtype };
  const numTokens = s.blockIds.length * BLOCK_SIZE;
  const scale = 1 / Math.sqrt(s.headDim);
  const n = native();
  return () => {
    for (const offset of s.offsets) n.kvAttend({ ...region, offset, blockIds: s.blockIds, numTokens, kvHeads, groupSize: s.groupSize, q, scale, out, lse });
  };
}

function label(c: AttnConfig): string {
  return `G${c.groupSize} D${c.headDim} ${c.dtype} ${c.context / 1024}k`;
}

interface AttnRow {
  config: string;
  groupSize: number;
  headDim: number;
  dtype: KvDtype;
  context: number;
  regionMiB: number;
  layers: number;
  msPerLayer: number;
  attnGBs: number;
  memcpyGBs: number; // single-thread copy GB/s measured just before this row
  ratio: number;
  timing: Timing;
}

/** Single-thread attention GB/s of K+V read, next to a memcpy measured immediately before it. */
function measureAttention(pool: HostArena, c: AttnConfig, sizes: Sizes, copy: (reps: number) => CopyBandwidth, order: 'shuffled' | 'in order' = 'shuffled'): AttnRow {
  const L = layout(c, sizes.poolBytes, order);
  const ref = copy(sizes.reps);
  const step = attentionStep({ handle: pool.handle, numBlocks: L.numBlocks, headDim: c.headDim, dtype: c.dtype, groupSize: c.groupSize, offsets: L.offsets, blockIds: L.blockIds, seed: 3 });
  const timing = timeReps(step, sizes.reps);
  const attnGBs = gbPerS(L.regionBytes * L.offsets.length, timing.medianMs);
  return {
    config: label(c), ...c,
    regionMiB: L.regionBytes / MiB, layers: L.offsets.length, msPerLayer: timing.medianMs / L.offsets.length,
    attnGBs, memcpyGBs: ref.copyGBs, ratio: attnGBs / ref.copyGBs, timing,
  };
}

/**
 * The row against the arithmetic ceiling: attention does 2 x groupSize x headDim multiply-adds a token of each KV
 * head, whatever the ISA. `ceiling` is the ratio to memcpy the row would reach doing nothing but those at the
 * level's measured peak (below the 0.7 target, no code reaches it); `share` is the fraction of that peak it runs at.
 */
function fmaColumns(r: AttnRow, fmaPerSecond: number): { ceiling: number; share: number } {
  const fmaSeconds = (2 * r.groupSize * r.headDim * r.context * NUM_KV_HEADS) / fmaPerSecond; // one layer
  return { ceiling: gbPerS(r.regionMiB * MiB, fmaSeconds * 1e3) / r.memcpyGBs, share: fmaSeconds / (r.msPerLayer / 1e3) };
}

function attentionGrid(sizes: Sizes): AttnConfig[] {
  const grid: AttnConfig[] = [];
  for (const context of sizes.contexts)
    for (const dtype of ['f16', 'bf16'] as const)
      for (const headDim of [64, 128])
        for (const groupSize of [1, 4, 8]) grid.push({ groupSize, headDim, dtype, context });
  return grid;
}

function representative(sizes: Sizes): AttnConfig {
  return { groupSize: 4, headDim: 128, dtype: 'bf16', context: Math.max(...sizes.contexts) };
}

interface SimdRow {
  level: SimdLevel;
  attnGBs: number;
  memcpyGBs: number;
  ratio: number;
  speedupOverScalar: number;
  timing: Timing;
}

/** The representative config at every SIMD level; the level is process-wide, so it is restored after. */
function simdRows(pool: HostArena, sizes: Sizes, copy: (reps: number) => CopyBandwidth): SimdRow[] {
  const initial = native().buildInfo().simd;
  const rows: SimdRow[] = [];
  try {
    for (const level of native().buildInfo().simdLevels) {
      native().setSimd({ level });
      const r = measureAttention(pool, representative(sizes), sizes, copy);
      rows.push({ level, attnGBs: r.attnGBs, memcpyGBs: r.memcpyGBs, ratio: r.ratio, speedupOverScalar: 0, timing: r.timing });
    }
  } finally {
    native().setSimd({ level: initial });
  }
  const scalar = rows[0].attnGBs;
  for (const r of rows) r.speedupOverScalar = r.attnGBs / scalar;
  return rows;
}

// ---- Thread scaling ----

interface AttendPayload extends StepSpec {
  role: 'attend';
}

function threadRange(numBlocks: number, rank: number, threads: number): [number, number] {
  return [Math.floor((numBlocks * rank) / threads), Math.floor((numBlocks * (rank + 1)) / threads)];
}

interface ScalingRow {
  threads: number;
  attnGBs: number;
  memcpyGBs: number; // aggregate copy GB/s at the same thread count, measured just before
  ratio: number;
  speedup: number; // over this section's 1-thread attention
  timing: Timing;
}

/**
 * The representative config split over T workers by block ranges (each thread takes a disjoint,
 * contiguous range of logical blocks for all heads — a shard kvoff's workers could take), released
 * together; the wall time from release to the last finisher gives the aggregate GB/s.
 */
async function scalingRow(pool: HostArena, sizes: Sizes, threads: number): Promise<Omit<ScalingRow, 'speedup'>> {
  const c = representative(sizes);
  const L = layout(c, sizes.poolBytes);
  const ref = await memcpyMultiThread(threads, 'private', multiThreadBytes(threads, sizes.mtMinTotal, sizes.mtMinPerThread), sizes.reps);
  const team = await Team.start(new URL(import.meta.url), 'attend', threads, (rank): AttendPayload => {
    const [b0, b1] = threadRange(L.numBlocks, rank, threads);
    return { role: 'attend', handle: pool.handle, numBlocks: L.numBlocks, headDim: c.headDim, dtype: c.dtype, groupSize: c.groupSize, offsets: L.offsets, blockIds: L.blockIds.slice(b0, b1), seed: 3 + rank };
  });
  try {
    const timing = team.time(sizes.reps);
    const attnGBs = gbPerS(L.regionBytes * L.offsets.length, timing.medianMs);
    return { threads, attnGBs, memcpyGBs: ref.copyGBs, ratio: attnGBs / ref.copyGBs, timing };
  } finally {
    await team.stop();
  }
}

async function scalingRows(pool: HostArena, sizes: Sizes, maxThreads: number): Promise<ScalingRow[]> {
  const rows: ScalingRow[] = [];
  for (let t = 1; t <= maxThreads; t++) {
    const r = await scalingRow(pool, sizes, t);
    rows.push({ ...r, speedup: r.attnGBs / (rows[0]?.attnGBs ?? r.attnGBs) });
  }
  return rows;
}

// ---- memcpy ----

/** Native memcpy into an arena (arenaWrite is one std::memcpy): checks that the JS copy is a fair yardstick. */
function nativeCopy(bytes: number, reps: number): CopyBandwidth {
  using arena = new HostArena(bytes, { pin: false });
  const src = new Uint8Array(bytes).fill(1);
  return copyResult('native memcpy (arenaWrite), main thread', 1, bytes, timeReps(() => arena.write(0, src), reps));
}

async function memcpyRows(sizes: Sizes, copy: (reps: number) => CopyBandwidth, maxThreads: number): Promise<CopyBandwidth[]> {
  const rows = [copy(sizes.reps), nativeCopy(sizes.copyBytes, sizes.reps)];
  for (const buffers of ['private', 'shared'] as const)
    for (let t = 1; t <= maxThreads; t++) rows.push(await memcpyMultiThread(t, buffers, multiThreadBytes(t, sizes.mtMinTotal, sizes.mtMinPerThread), sizes.reps));
  return rows;
}

// ---- KIVI, top-k, LSE merge ----

/** Per-call time of a fast op: each sample loops enough calls to last >= 2 ms, so timer resolution does not matter. */
function timeSmall(fn: () => void, reps: number): Timing {
  const t0 = performance.now();
  fn();
  const inner = Math.max(1, Math.ceil(2 / Math.max(performance.now() - t0, 1e-3)));
  const t = timeReps(() => { for (let i = 0; i < inner; i++) fn(); }, reps);
  return { medianMs: t.medianMs / inner, minMs: t.minMs / inner, maxMs: t.maxMs / inner, reps };
}

interface KiviRow {
  bits: 2 | 4;
  keys: number;
  codesMiB: number;
  ms: number;
  keysPerS: number;
  codesGBs: number; // packed codes only
  withParamsGBs: number; // codes + per-group fp16 zero/scale (half the size of the codes at 2 bits, D128, group 32)
  timing: Timing;
}

/** kiviScoreKeys over the representative context for all KV heads at once (groups of every head laid end to end). */
function kiviRow(bits: 2 | 4, sizes: Sizes): KiviRow {
  const c = representative(sizes);
  const D = c.headDim;
  const numGroups = (c.context * NUM_KV_HEADS) / KIVI_GROUP;
  const keys = numGroups * KIVI_GROUP;
  const codes = new Uint8Array((keys * D * bits) / 8);
  const r = lcg(5);
  for (let i = 0; i < codes.length; i++) codes[i] = Math.floor(r() * 256);
  const zero = Uint16Array.from(randomFloats(numGroups * D, 6), f32ToF16); // fp16 [numGroups, D]
  const scale = Uint16Array.from(randomFloats(numGroups * D, 8, 0.1), f32ToF16);
  const q = randomFloats(c.groupSize * D, 9), out = new Float32Array(keys);
  const timing = timeSmall(() => native().kiviScoreKeys({ bits, headDim: D, groupSize: KIVI_GROUP, numGroups, queryHeads: c.groupSize, q, codes, zero, scale, out }), sizes.reps);
  const ms = timing.medianMs;
  return {
    bits, keys, codesMiB: codes.length / MiB, ms, keysPerS: keys / (ms / 1e3),
    codesGBs: gbPerS(codes.length, ms), withParamsGBs: gbPerS(codes.length + zero.byteLength + scale.byteLength, ms), timing,
  };
}

function topKRow(sizes: Sizes) {
  const rows = 8, n = 32768, k = 64;
  const scores = randomFloats(rows * n, 12);
  const out = new Int32Array(rows * k);
  const timing = timeSmall(() => native().topK({ rows, n, k, scores, out }), sizes.reps);
  return { rows, n, k, us: timing.medianMs * 1e3, timing };
}

/** Merging two partial (o, lse) results of one layer's query heads — what each extra worker shard costs. */
function lseMergeRow(sizes: Sizes, attnMsPerLayer: number) {
  const c = representative(sizes);
  const rows = NUM_KV_HEADS * c.groupSize, D = c.headDim;
  const oA = randomFloats(rows * D, 13), oB = randomFloats(rows * D, 14), lseA = randomFloats(rows, 15), lseB = randomFloats(rows, 16);
  const out = new Float32Array(rows * D), lseOut = new Float32Array(rows);
  const timing = timeSmall(() => native().lseMerge({ rows, headDim: D, oA, lseA, oB, lseB, out, lseOut }), sizes.reps);
  const us = timing.medianMs * 1e3;
  return { rows, headDim: D, us, fractionOfAttentionLayer: timing.medianMs / attnMsPerLayer, timing };
}

// ---- Output ----

function fmt(x: number, digits = 2): string {
  return Number.isFinite(x) ? x.toFixed(digits) : String(x);
}

function table(headers: string[], rows: (string | number)[][]): string {
  const cells = rows.map((r) => r.map(String));
  const w = headers.map((h, i) => Math.max(h.length, ...cells.map((r) => r[i].length)));
  const line = (r: string[]) => r.map((s, i) => (i === 0 ? s.padEnd(w[i]) : s.padStart(w[i]))).join('  ');
  return [line(headers), w.map((n) => '-'.repeat(n)).join('  '), ...cells.map(line)].join('\n');
}

function printer(json: boolean): (title: string, body: string) => void {
  return (title, body) => {
    if (!json) console.log(`\n## ${title}\n${body}`);
  };
}

function mib(bytes: number | null): string {
  return bytes === null ? 'unknown' : `${fmt(bytes / MiB, bytes < MiB ? 3 : 0)} MiB`;
}

// ---- Main ----

async function main(): Promise<void> {
  const json = process.argv.includes('--json');
  const quick = process.argv.includes('--quick');
  const show = printer(json);
  const caches = cacheSizes();
  const machine = machineInfo(caches);
  const sizes = chooseSizes(quick, caches.llc);
  const maxThreads = os.availableParallelism();
  const grid = attentionGrid(sizes);
  const arenaBytes = Math.max(...grid.map((c) => layersFor(c, sizes.poolBytes) * regionBytes(c)));
  using pool = makePool(arenaBytes);
  const copy = singleThreadCopier(sizes.copyBytes);
  const poolOutgrowsLlc = caches.llc === null || arenaBytes >= 2 * caches.llc;
  const header = { ...machine, quick, reps: sizes.reps, poolMiB: arenaBytes / MiB, poolOutgrowsLlc, arena: { pinned: pool.pinned, method: pool.method }, numKvHeads: NUM_KV_HEADS, blockSize: BLOCK_SIZE };
  show('machine', [
    `cpu ${machine.cpu}; ${machine.cores} cores (availableParallelism ${maxThreads}); simd ${machine.simd} (levels: ${machine.simdLevels.join(', ')}); node ${machine.node}`,
    `L2 ${mib(caches.l2)}, LLC ${mib(caches.llc)}; KV pool ${fmt(arenaBytes / MiB, 0)} MiB (${pool.method}); ${sizes.reps} reps, median after 1 warm-up${quick ? '; --quick sizes' : ''}`,
    ...(poolOutgrowsLlc ? [] : ['warning: the KV pool is under 2x the LLC, so attention partly reads from cache and its ratios to memcpy overstate DRAM speed']),
  ].join('\n'));

  const memcpy = await memcpyRows(sizes, copy, maxThreads);
  show('memcpy (copy GB/s = bytes copied / s; read+write = 2x)', table(
    ['method', 'threads', 'MiB', 'copy GB/s', 'r+w GB/s'],
    memcpy.map((m) => [m.method, m.threads, fmt(m.bytes / MiB, 0), fmt(m.copyGBs), fmt(m.readWriteGBs)]),
  ));

  const fma = native().fmaRate({ seconds: quick ? 0.1 : 0.3 });
  show('fp32 multiply-adds, 1 thread (register-only chains at the active level: the arithmetic ceiling)',
    `${fma.level}: ${fmt(fma.fmaPerSecond / 1e9)} G multiply-adds/s`);
  const attention = grid.map((c) => measureAttention(pool, c, sizes, copy)).map((r) => ({ ...r, fma: fmaColumns(r, fma.fmaPerSecond) }));
  const l2 = caches.l2 ?? 0;
  show(`attention, 1 thread (${NUM_KV_HEADS} KV heads, block ${BLOCK_SIZE}, shuffled blocks; GB/s of K+V read; ratio to 1-thread memcpy copy GB/s measured just before; target >= ${TARGET_RATIO}; ` +
    'FMA ceiling: the ratio its 2 x G x D multiply-adds a token allow at the peak above; x FMA peak: the share of that peak it runs at)', table(
    ['config', 'region MiB', 'layers', 'ms/layer', 'attn GB/s', 'memcpy GB/s', 'ratio', 'meets', 'FMA ceiling', 'x FMA peak'],
    attention.map((r) => [r.config + (r.regionMiB * MiB <= l2 ? ' (fits L2!)' : ''), fmt(r.regionMiB, 0), r.layers, fmt(r.msPerLayer), fmt(r.attnGBs), fmt(r.memcpyGBs), fmt(r.ratio), r.ratio >= TARGET_RATIO ? 'yes' : 'no', fmt(r.fma.ceiling), fmt(r.fma.share)]),
  ));

  const rep = representative(sizes);
  const order = (['in order', 'shuffled'] as const).map((o) => ({ order: o, ...measureAttention(pool, rep, sizes, copy, o) }));
  show(`block order (${label(rep)}, 1 thread)`, table(
    ['block ids', 'attn GB/s', 'memcpy GB/s', 'ratio'],
    order.map((r) => [r.order, fmt(r.attnGBs), fmt(r.memcpyGBs), fmt(r.ratio)]),
  ));

  const simd = simdRows(pool, sizes, copy);
  show(`SIMD levels (${label(rep)}, 1 thread)`, table(
    ['level', 'attn GB/s', 'memcpy GB/s', 'ratio', 'x scalar'],
    simd.map((r) => [r.level, fmt(r.attnGBs), fmt(r.memcpyGBs), fmt(r.ratio), fmt(r.speedupOverScalar)]),
  ));

  const scaling = await scalingRows(pool, sizes, maxThreads);
  // Attention only reads while memcpy reads and writes, so once DRAM saturates the copy-GB/s ratio can pass 1;
  // the r+w column is the share of the memory traffic memcpy achieved.
  show(`thread scaling (${label(rep)}, block ranges over T workers released together; memcpy = T threads, per-thread buffers, measured just before)`, table(
    ['threads', 'attn GB/s', 'memcpy GB/s', 'ratio', 'attn / memcpy r+w', 'x 1 thread'],
    scaling.map((r) => [r.threads, fmt(r.attnGBs), fmt(r.memcpyGBs), fmt(r.ratio), fmt(r.ratio / 2), fmt(r.speedup)]),
  ));

  const kivi = ([2, 4] as const).map((bits) => kiviRow(bits, sizes));
  show(`KIVI kiviScoreKeys (${rep.context / 1024}k tokens x ${NUM_KV_HEADS} KV heads, D${rep.headDim}, GQA ${rep.groupSize}, group ${KIVI_GROUP})`, table(
    ['bits', 'keys', 'codes MiB', 'ms', 'Mkeys/s', 'codes GB/s', 'codes+zero/scale GB/s'],
    kivi.map((r) => [r.bits, r.keys, fmt(r.codesMiB), fmt(r.ms, 3), fmt(r.keysPerS / 1e6, 1), fmt(r.codesGBs), fmt(r.withParamsGBs)]),
  ));

  const repRow = order.find((r) => r.order === 'shuffled')!;
  const topK = topKRow(sizes);
  const lseMerge = lseMergeRow(sizes, repRow.msPerLayer);
  show('top-k and LSE merge', table(
    ['op', 'shape', 'us/call', 'note'],
    [
      ['topK', `${topK.rows} x ${topK.n}, k ${topK.k}`, fmt(topK.us, 1), ''],
      ['lseMerge', `${lseMerge.rows} rows x D${lseMerge.headDim}`, fmt(lseMerge.us, 2), `${fmt(100 * lseMerge.fractionOfAttentionLayer, 3)}% of one layer's 1-thread attention (${label(rep)})`],
    ],
  ));

  if (json) console.log(JSON.stringify({ machine: header, memcpy, fma, attention, blockOrder: order, simd, scaling, kivi, topK, lseMerge }, null, 2));
  else console.log(`\nmedian single-thread ratio over ${attention.length} configs: ${fmt(median(attention.map((r) => r.ratio)))} (target >= ${TARGET_RATIO})`);
}

if (isTeamWorker('attend')) serveTeam((d) => attentionStep(d as unknown as StepSpec));
else if (isMainThread) await main();
