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

/** InfiniGen's partial-key scores: q . k of query rows against keys stored densely, [n, dim] 16-bit rows (unscaled). */
export interface PartialKeyScoresOptions {
  dtype: KvDtype;
  dim: number; // channels per key row (InfiniGen's r)
  n: number; // key rows
  rows: number; // query rows
  keys: Uint16Array | ArenaRef; // [n, dim]
  q: Float32Array | ArenaRef; // [rows, dim]
  out: Float32Array | ArenaRef; // [rows, n]
}

/** Quest's per-page upper bound of q . k from per-channel key ranges, max over the query heads of a group. */
export interface PageBoundsOptions {
  queryHeads: number;
  headDim: number;
  numPages: number;
  q: Float32Array | ArenaRef; // [queryHeads, headDim]
  meta: Uint16Array | ArenaRef; // [numPages, 2 (min, max), headDim] fp16 bits: min rounded down, max up
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

/** KIVI zero/scale travel as fp16 bit patterns (Uint16Array), computed as kiviParamsF16 in src/kernels/kivi.ts says. */
export interface KiviShape {
  bits: 1 | 2 | 4;
  headDim: number;
  groupSize: number;
}

export interface KiviKeysOptions extends KiviShape {
  numGroups: number;
  src: Float32Array | ArenaRef; // [numGroups, groupSize, headDim]
  codes: Uint8Array | ArenaRef; // [numGroups, groupSize, headDim * bits / 8]
  zero: Uint16Array | ArenaRef; // fp16 bits [numGroups, headDim]
  scale: Uint16Array | ArenaRef; // fp16 bits [numGroups, headDim]
}

export interface KiviKeysDequantOptions extends Omit<KiviKeysOptions, 'src'> {
  out: Float32Array | ArenaRef; // [numGroups, groupSize, headDim]
}

export interface KiviValuesOptions extends KiviShape {
  numTokens: number;
  src: Float32Array | ArenaRef; // [numTokens, headDim]
  codes: Uint8Array | ArenaRef; // [numTokens, headDim * bits / 8]
  zero: Uint16Array | ArenaRef; // fp16 bits [numTokens, headDim / groupSize]
  scale: Uint16Array | ArenaRef; // fp16 bits [numTokens, headDim / groupSize]
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
  keyZero: Uint16Array | ArenaRef; // fp16 bits [numGroups, headDim]
  keyScale: Uint16Array | ArenaRef; // fp16 bits [numGroups, headDim]
  valueCodes: Uint8Array | ArenaRef; // [numTokens, headDim * bits / 8]
  valueZero: Uint16Array | ArenaRef; // fp16 bits [numTokens, headDim / valueGroupSize]
  valueScale: Uint16Array | ArenaRef; // fp16 bits [numTokens, headDim / valueGroupSize]
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

/** A byte offset inside a device arena (cudaArenaCreate); device pointers never reach JS. */
export interface DevRef {
  devHandle: number;
  devOffset: number;
}

/** Live device-tier objects of this process: for leak checks. All zeros without a GPU. */
export interface CudaArenaTotals {
  count: number; // device arenas still allocated (freed ones stay until a synchronize sees their last use)
  bytes: number;
  streams: number; // created by cudaStreamCreate, not destroyed (the default stream 0 is not counted)
  events: number;
  stagingBytes: number; // device bytes of cudaKvGather's index staging pool, outside every arena
}

/** Async copy between a host arena range and a device arena range on a stream (0 or absent: kvoff's default stream). */
export interface CudaHostCopyOptions {
  hostHandle: number;
  hostOffset: number;
  devHandle: number;
  devOffset: number;
  bytes: number;
  stream?: number;
}

/**
 * Zero-copy gather of (token, head) units from a pinned, mapped host KV region (a HostArena created with a
 * usable GPU: method 'cudaHostRegister') into a device arena, one kernel launch on `stream`. The same
 * fields and result layout as kvGather (reference: gatherRef). With unitTokens u > 1, positions (and
 * dstSlots) come in groups of u consecutive tokens inside one block, each group fetched as one
 * contiguous u * 4 * headDim-byte unit. Returns the number of units launched.
 */
export interface CudaKvGatherOptions extends KvRegion {
  blockIds: Int32Array; // the sequence's block table (logical -> physical)
  kvHeads: Int32Array; // [nh]
  n: number; // tokens per head, a multiple of unitTokens
  positions: Int32Array; // [nh, n] logical token positions
  unitTokens?: number; // 1 (default) .. blockSize
  dstSlots?: Int32Array; // [nh, n] distinct slots per head in dst
  dstCapacity?: number; // slots per head in dst, with dstSlots
  dst: DevRef; // [nh, n, 2 (K,V), headDim] 16-bit; [nh, dstCapacity, 2, headDim] with dstSlots
  stream?: number;
}

/** y = W x on the GPU: W [rows, cols] bf16 row-major, x [cols] f32, y [rows] f32, f32 accumulation (reference: gemvBf16Ref). */
export interface CudaGemvBf16Options {
  w: DevRef; // [rows, cols] bf16, 2-byte aligned (16-byte aligned with cols % 8 == 0 for the fast path)
  rows: number;
  cols: number;
  x: DevRef; // [cols] f32, 4-byte aligned (16 for the fast path)
  y: DevRef; // [rows] f32; may not overlap w or x
  stream?: number;
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
  partialKeyScores(o: PartialKeyScoresOptions): void;
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
  // ---- Device tier (CUDA). Without a usable GPU every entry below but cudaArenaTotals throws
  // KvoffDeviceError ("no usable GPU" / "CUDA not built", with the reason), after checking its arguments.
  /** cudaMalloc'd device memory (never managed); KvoffCapacityError with needed and free bytes when it does not fit. Contents undefined. */
  cudaArenaCreate(o: { bytes: number }): { handle: number; bytes: number };
  /** The memory is released once no enqueued work still uses it (after a synchronize of the streams that did). */
  cudaArenaFree(o: { handle: number }): void;
  /** Synchronous, for tests and setup; does not wait for kvoff's streams: synchronize them first. */
  cudaArenaWrite(o: { handle: number; offset: number; data: Uint8Array }): void;
  cudaArenaRead(o: { handle: number; offset: number; bytes: number }): Uint8Array;
  cudaArenaTotals(): CudaArenaTotals;
  cudaCopyH2D(o: CudaHostCopyOptions): void;
  cudaCopyD2H(o: CudaHostCopyOptions): void;
  cudaCopyD2D(o: { src: DevRef; dst: DevRef; bytes: number; stream?: number }): void;
  /** A non-blocking stream; 0 is kvoff's default stream, always there. */
  cudaStreamCreate(): number;
  /** Waits (blocking) for the stream's work, then destroys it. */
  cudaStreamDestroy(o: { stream: number }): void;
  /** Resolves when all work enqueued so far on the stream has finished; rejects with KvoffDeviceError if it failed. Never blocks a thread. */
  cudaStreamSynchronize(o: { stream?: number }): Promise<void>;
  /** Records a new event on the stream and returns its handle (free it with cudaEventFree). */
  cudaEventRecord(o: { stream?: number; timing?: boolean }): number;
  /** Work enqueued on `stream` after this call waits for `event`. */
  cudaStreamWaitEvent(o: { stream?: number; event: number }): void;
  /** Milliseconds between two completed events recorded with timing: true. */
  cudaEventElapsedMs(o: { start: number; end: number }): number;
  cudaEventFree(o: { event: number }): void;
  cudaKvGather(o: CudaKvGatherOptions): number;
  cudaGemvBf16(o: CudaGemvBf16Options): void;
  // ---- model-side kernels (cuda_model_ops.cc) ----
  // ---- attention kernels (cuda_attention_ops.cc) ----
  // ---- low-bit kernels (cuda_lowbit_ops.cc) ----
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
