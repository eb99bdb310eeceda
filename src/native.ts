// The native addon's whole surface, typed once; every call maps native errors to kvoff's typed errors.
import { createRequire } from 'node:module';
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { KvoffNativeError, fromNativeError } from './errors.js';

export type KvDtype = 'f16' | 'bf16';
export type SimdLevel = 'scalar' | 'avx2' | 'avx512';

/** A buffer inside a host arena, usable wherever a kernel takes a typed array. */
export interface ArenaRef {
  handle: number;
  offset: number;
}

/** One layer's paged KV region in an arena: [numBlocks, numKvHeads, blockSize, 2 (K,V), headDim]. */
export interface KvRegion {
  handle: number;
  offset: number;
  numBlocks: number;
  numKvHeads: number;
  headDim: number;
  blockSize: number;
  dtype: KvDtype;
}

export interface KvAppendOptions extends KvRegion {
  slots: Int32Array; // [n] slot = blockId * blockSize + offset
  k: Float32Array; // [n, numKvHeads, headDim]
  v: Float32Array; // [n, numKvHeads, headDim]
}

export interface KvAttendOptions extends KvRegion {
  blockIds: Int32Array; // [>= ceil(numTokens / blockSize)] physical ids in logical order
  numTokens: number;
  kvHeads: Int32Array; // [nh] which KV heads to attend
  groupSize: number; // query heads per KV head (GQA ratio)
  q: Float32Array | ArenaRef; // [nh, groupSize, headDim]
  scale: number;
  out: Float32Array | ArenaRef; // [nh, groupSize, headDim]
  lse: Float32Array | ArenaRef; // [nh, groupSize]
  exclude?: Int32Array; // sorted positions in [0, numTokens) left out (attended elsewhere)
}

/** Raw scaled scores of query rows against one KV head's keys over a block list (eviction policies rank by them). */
export interface KvScoresOptions extends KvRegion {
  blockIds: Int32Array; // [>= ceil(numTokens / blockSize)] physical ids in logical order
  numTokens: number;
  kvHead: number;
  rows: number; // query rows, e.g. the G query heads of a GQA group, or window * G
  q: Float32Array | ArenaRef; // [rows, headDim]
  scale: number;
  out: Float32Array | ArenaRef; // [rows, numTokens] scale * q . k
}

/** SparQ's approximate scores: q . k of query rows over only the chosen channels of one KV head's keys (unscaled). */
export interface KvColumnScoresOptions extends KvRegion {
  blockIds: Int32Array; // [>= ceil(numTokens / blockSize)] physical ids in logical order
  numTokens: number;
  kvHead: number;
  rows: number; // query rows, e.g. the G query heads of a GQA group
  q: Float32Array | ArenaRef; // [rows, headDim]; only the chosen channels are read
  columns: Int32Array; // [r] distinct channels in [0, headDim)
  out: Float32Array | ArenaRef; // [rows, numTokens]
}

/** Quest's per-page upper bound of q . k from per-channel key ranges, max over the query heads of a group. */
export interface PageBoundsOptions {
  queryHeads: number;
  headDim: number;
  numPages: number;
  q: Float32Array | ArenaRef; // [queryHeads, headDim]
  meta: Float32Array | ArenaRef; // [numPages, 2 (min, max), headDim]
  out: Float32Array | ArenaRef; // [numPages] max_g sum_i max(q_gi * min_i, q_gi * max_i)
}

/** Gather of (token, head) units of a paged region into a compact buffer: the hot-set fetch. */
export interface KvGatherOptions extends KvRegion {
  blockIds: Int32Array; // the sequence's block table (logical -> physical)
  kvHeads: Int32Array; // [nh]
  n: number; // units per head
  positions: Int32Array; // [nh, n] logical token positions; consecutive ones in a block are copied as one run
  dst: Uint16Array | ArenaRef; // [nh, n, 2 (K,V), headDim] raw fp16/bf16; [nh, dstCapacity, 2, headDim] with dstSlots
  dstSlots?: Int32Array; // [nh, n] slot of each unit in dst (a resident hot set fills only its misses)
  dstCapacity?: number; // slots per head in dst, with dstSlots
}

export interface KiviShape {
  bits: 1 | 2 | 4;
  headDim: number;
  groupSize: number;
}

export interface KiviKeysOptions extends KiviShape {
  numGroups: number;
  src: Float32Array | ArenaRef; // [numGroups, groupSize, headDim]
  codes: Uint8Array | ArenaRef; // [numGroups, groupSize, headDim * bits / 8]
  zero: Float32Array | ArenaRef; // [numGroups, headDim]
  scale: Float32Array | ArenaRef; // [numGroups, headDim]
}

export interface KiviKeysDequantOptions extends Omit<KiviKeysOptions, 'src'> {
  out: Float32Array | ArenaRef; // [numGroups, groupSize, headDim]
}

export interface KiviValuesOptions extends KiviShape {
  numTokens: number;
  src: Float32Array | ArenaRef; // [numTokens, headDim]
  codes: Uint8Array | ArenaRef; // [numTokens, headDim * bits / 8]
  zero: Float32Array | ArenaRef; // [numTokens, headDim / groupSize]
  scale: Float32Array | ArenaRef; // [numTokens, headDim / groupSize]
}

export interface KiviValuesDequantOptions extends Omit<KiviValuesOptions, 'src'> {
  out: Float32Array | ArenaRef; // [numTokens, headDim]
}

export interface KiviScoreOptions extends Omit<KiviKeysOptions, 'src'> {
  queryHeads: number;
  q: Float32Array | ArenaRef; // [queryHeads, headDim]
  out: Float32Array | ArenaRef; // [numGroups * groupSize]
}

/**
 * Exact attention of one GQA query group over a range of KIVI-quantized tokens of one KV head (the
 * low-bit tail); returns (o, lse) like kvAttend. numTokens = numGroups * keyGroupSize.
 */
export interface KiviAttendOptions {
  bits: 1 | 2 | 4;
  headDim: number;
  keyGroupSize: number; // tokens per key group
  valueGroupSize: number; // channels per value group, a divisor of headDim
  numGroups: number; // key groups
  queryHeads: number; // query heads sharing this KV head (GQA ratio)
  q: Float32Array | ArenaRef; // [queryHeads, headDim]
  scale: number; // softmax scale, usually 1/sqrt(headDim)
  keyCodes: Uint8Array | ArenaRef; // [numGroups, keyGroupSize, headDim * bits / 8]
  keyZero: Float32Array | ArenaRef; // [numGroups, headDim]
  keyScale: Float32Array | ArenaRef; // [numGroups, headDim]
  valueCodes: Uint8Array | ArenaRef; // [numTokens, headDim * bits / 8]
  valueZero: Float32Array | ArenaRef; // [numTokens, headDim / valueGroupSize]
  valueScale: Float32Array | ArenaRef; // [numTokens, headDim / valueGroupSize]
  exclude?: Int32Array; // sorted positions in [0, numTokens) left out (attended elsewhere)
  out: Float32Array | ArenaRef; // [queryHeads, headDim]; zeros when nothing is attended
  lse: Float32Array | ArenaRef; // [queryHeads]; -inf when nothing is attended
}

export interface LseMergeOptions {
  rows: number;
  headDim: number;
  oA: Float32Array | ArenaRef; // [rows, headDim]
  lseA: Float32Array | ArenaRef; // [rows]
  oB: Float32Array | ArenaRef;
  lseB: Float32Array | ArenaRef;
  out: Float32Array | ArenaRef; // may be oA or oB
  lseOut: Float32Array | ArenaRef;
}

export interface TopKOptions {
  rows: number;
  n: number;
  k: number;
  scores: Float32Array | ArenaRef; // [rows, n]
  out: Int32Array | ArenaRef; // [rows, k] best first; ties to the lower index; NaN last
}

export interface ArenaCreateResult {
  handle: number;
  bytes: number;
  pinned: boolean;
  method: 'cudaHostRegister' | 'mlock' | 'pageable';
  warning?: string;
}

export interface BuildInfo {
  simd: SimdLevel;
  cpuFeatures: Record<'avx2' | 'fma' | 'f16c' | 'avx512f' | 'avx512bw' | 'avx512vl' | 'avx512dq' | 'amx-tile' | 'amx-bf16', boolean>;
  cuda: { built: boolean; deviceCount: number; driverVersion: number; runtimeVersion: number; deviceName: string; reason: string };
}

/** Free and total bytes of one GPU; ok false (with reason) without a usable GPU or without CUDA in the build. */
export interface CudaMemInfo {
  ok: boolean;
  device: number;
  freeBytes: number;
  totalBytes: number;
  reason: string; // '' when ok
}

/** Bulk pinned-memory copy speed of one GPU's link, best of `iterations` each way; ok false (with reason) when it could not be measured. */
export interface CudaBandwidthResult {
  ok: boolean;
  device: number;
  bytes: number;
  iterations: number;
  h2dGbPerS: number; // bytes copied per second / 1e9; 0 when not ok
  d2hGbPerS: number;
  reason: string; // '' when ok
}

/** Aggregate memcpy speed of `threads` native threads copying private slices together, best of `iterations`. */
export interface HostMemcpyResult {
  bytes: number; // copied per iteration, all threads together
  threads: number;
  iterations: number;
  bestMs: number;
  gbPerS: number; // bytes copied per second / 1e9 (each byte is read once and written once)
}

export interface NativeAddon {
  arenaCreate(o: { bytes: number; pin?: boolean }): ArenaCreateResult;
  arenaFree(o: { handle: number }): void;
  arenaWrite(o: { handle: number; offset: number; data: Uint8Array }): void;
  arenaRead(o: { handle: number; offset: number; bytes: number }): Uint8Array;
  arenaCopy(o: { srcHandle: number; srcOffset: number; dstHandle: number; dstOffset: number; bytes: number }): void;
  arenaTotals(): { count: number; bytes: number };
  kvAppend(o: KvAppendOptions): void;
  kvAttend(o: KvAttendOptions): void;
  kvScores(o: KvScoresOptions): void;
  kvColumnScores(o: KvColumnScoresOptions): void;
  pageBounds(o: PageBoundsOptions): void;
  /** Returns the number of memcpy runs it made. */
  kvGather(o: KvGatherOptions): number;
  /** The same copy on the libuv thread pool, overlapping with compute; resolves with the run count. */
  kvGatherAsync(o: KvGatherOptions): Promise<number>;
  kiviQuantizeKeys(o: KiviKeysOptions): void;
  kiviDequantizeKeys(o: KiviKeysDequantOptions): void;
  kiviQuantizeValues(o: KiviValuesOptions): void;
  kiviDequantizeValues(o: KiviValuesDequantOptions): void;
  kiviScoreKeys(o: KiviScoreOptions): void;
  kiviAttend(o: KiviAttendOptions): void;
  lseMerge(o: LseMergeOptions): void;
  topK(o: TopKOptions): void;
  buildInfo(): BuildInfo;
  setSimd(o: { level: SimdLevel | 'auto' }): SimdLevel;
  cudaMemInfo(o?: { device?: number }): CudaMemInfo;
  /** Pinned (cudaHostAlloc) H2D and D2H cudaMemcpyAsync timed with events; resolves ok=false with a reason rather than rejecting. */
  cudaBandwidth(o: { bytes: number; iterations?: number; device?: number }): Promise<CudaBandwidthResult>;
  hostMemcpyBandwidth(o: { bytes: number; threads: number; iterations?: number }): Promise<HostMemcpyResult>;
}

const here = dirname(fileURLToPath(import.meta.url));

function candidates(): string[] {
  const list: string[] = [];
  if (process.env.KVOFF_ADDON) list.push(process.env.KVOFF_ADDON);
  // src/native.ts (tests) sits one level below the package root; dist/src/native.js two.
  for (const up of ['..', join('..', '..')]) {
    list.push(join(here, up, 'build', 'Release', 'kvoff.node'), join(here, up, 'build', 'Debug', 'kvoff.node'));
  }
  return list;
}

function load(): NativeAddon {
  const require = createRequire(import.meta.url);
  const tried = candidates();
  for (const path of tried) {
    if (!existsSync(path)) continue;
    try {
      return require(path) as NativeAddon;
    } catch (cause) {
      throw new KvoffNativeError(
        `Expected to load the kvoff native addon from ${path} but it failed: ${(cause as Error).message}. ` +
          'Fix: rebuild it for this Node.js with `npm rebuild kvoff` (needs python3, make and a C++17 compiler); ' +
          'if it was built on another machine or Node version, rebuild here.',
        { cause },
      );
    }
  }
  throw new KvoffNativeError(
    `Expected the kvoff native addon at one of ${tried.join(', ')} but found none. ` +
      'Fix: run `npm install` (or `npm rebuild kvoff`) so node-gyp builds it; it needs python3, make and g++. ' +
      'Set KVOFF_ADDON to a .node path to use a prebuilt one.',
  );
}

function wrap(raw: NativeAddon): NativeAddon {
  const out = {} as Record<string, unknown>;
  for (const [name, fn] of Object.entries(raw)) {
    if (typeof fn !== 'function') continue;
    out[name] = (...args: unknown[]) => {
      let result: unknown;
      try {
        result = (fn as (...a: unknown[]) => unknown)(...args);
      } catch (err) {
        throw fromNativeError(err);
      }
      // Async entry points reject from a worker thread: give those errors the same typed classes.
      return result instanceof Promise ? result.catch((err: unknown) => Promise.reject(fromNativeError(err))) : result;
    };
  }
  return out as unknown as NativeAddon;
}

let cached: NativeAddon | undefined;

/** The loaded addon (loaded on first use, so that importing kvoff never throws). */
export function native(): NativeAddon {
  cached ??= wrap(load());
  return cached;
}
