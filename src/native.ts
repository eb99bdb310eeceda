// The native addon's whole surface, typed once; every call maps native errors to kvoff's typed errors.
import { createRequire } from 'node:module';
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { KvoffNativeError, fromNativeError } from './errors.js';

export type KvDtype = 'f16' | 'bf16';
export type SimdLevel = 'scalar' | 'avx2' | 'avx512' | 'amx';

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
  /** Every level setSimd accepts here, narrowest first (amx also needs the OS to grant the tile state). */
  simdLevels: SimdLevel[];
  cpuFeatures: Record<'avx2' | 'fma' | 'f16c' | 'avx512f' | 'avx512bw' | 'avx512vl' | 'avx512dq' | 'avx512bf16' | 'amx-tile' | 'amx-bf16', boolean>;
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

export interface FmaRateResult {
  level: SimdLevel;
  fmaPerSecond: number; // lane multiply-adds a second, one thread: the arithmetic ceiling beside memcpy's
  checksum: number; // the chains' sum, returned so that they are not optimised away
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

/**
 * cudaKvGather with the positions (a top-k's output) and the block table already in device memory: the
 * speculative prefetch needs no host round trip. Head h's n positions land in dst slots dstSlot..dstSlot+n-1.
 * Out-of-range positions or block ids are clamped into the region by the kernel (memory-safe). Returns units.
 */
export interface CudaKvGatherDeviceOptions extends KvRegion {
  /** A batch of sequences sharing the host region (default 1): each has its own block table row, positions and dst heads. */
  seqs?: number;
  blockTable: DevRef; // int32 [seqs, tableLen] logical block -> physical block
  tableLen: number;
  positions: DevRef; // int32 [seqs * numKvHeads, ldPositions]
  ldPositions?: number; // default n
  n: number; // positions per head
  dst: DevRef; // [seqs * numKvHeads, dstCapacity, 2, headDim] 16-bit
  dstCapacity: number;
  dstSlot?: number; // default 0
  table: DevRef; // scratch: 8 * seqs * numKvHeads * n bytes
  stream?: number;
}

// cuda model kernels
// Model-side kernels (cuda_model_ops.cc; references in src/kernels/model-ref.ts). All are asynchronous on
// `stream` (0 or absent: kvoff's default stream); activations f32, weights bf16, sums in f32. Shapes,
// alignment (4 bytes for f32 and int32, 2 for bf16) and overlaps are checked before anything is enqueued.

/** H2D copy of JS memory: copied into a pinned staging slot before the call returns, so `data` may be reused at once. */
export interface CudaUploadOptions {
  dst: DevRef; // [data.byteLength] bytes
  data: ArrayBufferView;
  stream?: number;
}

/** D2H copy after the stream's earlier work; resolves with a fresh copy, rejects with KvoffDeviceError if the stream failed. */
export interface CudaDownloadOptions {
  src: DevRef; // [bytes]
  bytes: number; // at most 2^31
  stream?: number;
}

/** dst[i] = u * scale with u uniform in [-1, 1) from a hash of (seed, i), rounded to dtype (reference: fillRandomRef). */
export interface CudaFillRandomOptions {
  dst: DevRef; // [count] of dtype
  count: number;
  dtype: 'f32' | 'bf16' | 'f16';
  seed: number; // uint32
  scale: number;
  stream?: number;
}

/** out[r] = table[ids[r]] widened to f32 (reference: embedRef). */
export interface CudaEmbedOptions {
  table: DevRef; // [vocab, hidden] bf16
  vocab: number;
  hidden: number;
  ids: Int32Array; // [rows], each in [0, vocab)
  out: DevRef; // [rows, hidden] f32
  stream?: number;
}

/** out = x / sqrt(mean(x^2) + eps) * weight per row; the sum of squares in f64, so huge activations do not overflow (reference: rmsNormRef). */
export interface CudaRmsNormOptions {
  x: DevRef; // [rows, n] f32
  weight: DevRef; // [n] bf16
  out: DevRef; // [rows, n] f32; may equal x, may not partly overlap it
  rows: number;
  n: number;
  eps: number;
  stream?: number;
}

/** HF rotate_half RoPE in place, bit-exact with ropeRef and the CPU graph (reference: ropeRef). */
export interface CudaRopeOptions {
  x: DevRef; // [rows, heads, headDim] f32 inside rows rowStride floats apart
  rows: number;
  heads: number;
  headDim: number; // even
  rowStride?: number; // floats between consecutive rows, >= heads * headDim (the default): q/k inside a fused qkv row
  cos: DevRef; // [rows, headDim] f32, as ropeTables() returns
  sin: DevRef; // [rows, headDim] f32
  stream?: number;
}

/**
 * y = x W^T (or y += x W^T with accumulate). m = 1: the bandwidth GEMV; m <= 16: a multi-row GEMV whose rows are
 * bitwise the m = 1 results; m > 16: tensor cores with x rounded to bf16 (reference: gemmBf16Ref).
 */
export interface CudaGemmOptions {
  w: DevRef; // [n, k] bf16 row-major
  x: DevRef; // [m, k] f32
  y: DevRef; // [m, n] f32; may not overlap w or x
  m: number;
  n: number;
  k: number;
  accumulate?: boolean;
  stream?: number;
}

/** out = silu(gate) * up (reference: swigluRef). */
export interface CudaSwiGluOptions {
  gateUp: DevRef; // [m, 2 * inter] f32: gate then up in each row
  out: DevRef; // [m, inter] f32; may not overlap gateUp
  m: number;
  inter: number;
  stream?: number;
}

/** out = a + b, f32. */
export interface CudaAddOptions {
  a: DevRef; // [n] f32
  b: DevRef; // [n] f32
  out: DevRef; // [n] f32; may equal a or b
  n: number;
  stream?: number;
}

/** x[r, i] += bias[i] for i < n over rows r of x (reference: addBiasRef). */
export interface CudaAddBiasOptions {
  x: DevRef; // [rows, rowStride] f32
  bias: DevRef; // [n] f32; may not overlap x
  rows: number;
  n: number;
  rowStride?: number; // floats between rows of x; default n
  stream?: number;
}

/** out[r] = argmax of row r with sampling.ts argmax semantics: first maximum, NaN skipped, NaN at index 0 gives 0 (reference: argmaxRef). */
export interface CudaArgmaxOptions {
  x: DevRef; // [m, n] f32
  m: number;
  n: number;
  out: DevRef; // [m] int32; may not overlap x
  stream?: number;
}

/**
 * out[0] = one token drawn from x [n] with sampling.ts sample() semantics for the uniform draw u (sorted by logit,
 * top-k, temperature, top-p; f64 weights): the same token as sample(x, o, () => u) but for rounding at a boundary.
 */
export interface CudaSampleOptions {
  x: DevRef; // [n] f32
  n: number;
  temperature: number; // > 0: greedy is cudaArgmax
  topK?: number; // 0 (default) = off
  topP?: number; // (0, 1], default 1 = off
  u: number; // [0, 1)
  out: DevRef; // [1] int32
  scratch: DevRef; // cudaSampleScratchBytes({ n }) bytes
  stream?: number;
}

// cuda attention kernels

/**
 * A device KV region of one layer: [numKvHeads, capacity, 2 (K, V), headDim] 16-bit in a device arena, each head
 * owning `capacity` rows of one token's K vector then V vector (cudaKvGather's dstSlots layout).
 */
export interface DevKvRegion {
  kv: DevRef; // 2-byte aligned; 16-byte aligned with headDim 32/64/128/256 for the vector path
  capacity: number;
  numKvHeads: number;
  headDim: number; // <= 256 for the attention kernels
  dtype: KvDtype;
  groupSize: number; // G query heads per KV head (GQA)
}

/** New tokens' K and V as f32 in device memory; tokens srcRowStride floats apart, so they may sit inside a fused qkv output. */
export interface CudaKvSource {
  k: DevRef; // [tokens, numKvHeads, headDim] f32
  v: DevRef; // [tokens, numKvHeads, headDim] f32
  srcRowStride?: number; // floats between consecutive tokens; default numKvHeads * headDim
  tokens: number;
  numKvHeads: number;
  headDim: number;
  dtype: KvDtype;
  stream?: number;
}

/** Rows slot .. slot + tokens - 1 of every head of a device KV region, rounded to nearest even like kvAppend (reference: kvWriteRef). */
export interface CudaKvWriteOptions extends CudaKvSource {
  dst: DevRef; // [numKvHeads, capacity, 2, headDim] 16-bit (batched: [tokens, numKvHeads, capacity, 2, headDim]); may not overlap k or v
  capacity: number;
  slot?: number; // slot + tokens <= capacity; required unless batched
  /** Batched (a token per sequence, tokens <= 64): token t is sequence t's, written to slot slots[t] of the t-th region of dst. */
  slots?: Int32Array;
}

/**
 * Zero-copy store of new tokens into the pinned host paged KV (a HostArena with method 'cudaHostRegister'): the
 * bytes kvAppend would store for positions start .. start + tokens - 1 of the sequence whose table is blockIds.
 */
export interface CudaKvStoreHostOptions extends CudaKvSource, Omit<KvRegion, 'numKvHeads' | 'headDim' | 'dtype'> {
  blockIds?: Int32Array; // the sequence's block table; the entries written to must be distinct and < numBlocks
  start?: number; // position of the first token
  /** Batched (a token per sequence, tokens <= 64, instead of blockIds and start): token t lands at row offsets[t] of block blocks[t]. */
  blocks?: Int32Array;
  offsets?: Int32Array;
}

/**
 * Split-K decode attention over device KV rows: query row h * G + g attends rows [0, counts[h]) of head h
 * (reference: decodeRef). Needs `scratch` of at least cudaAttendScratchBytes({..., maxRows}) bytes for counts <= maxRows.
 */
export interface CudaAttendDecodeOptions extends DevKvRegion {
  counts: Int32Array; // [seqs * numKvHeads] rows attended per head, each in [0, capacity]; 0 gives out 0, lse -inf
  q: DevRef; // [numKvHeads * G, headDim] f32 per sequence
  /**
   * A batch of `seqs` sequences (seqs * numKvHeads <= 256) in one launch: kv holds their regions one after another,
   * sequence s's queries start s * qSeqStride floats into q (default: contiguous), out and lse hold their rows in turn.
   */
  seqs?: number;
  qSeqStride?: number;
  scale: number;
  out: DevRef; // [numKvHeads * G, headDim] f32; may not overlap q, kv, lse or scratch
  lse: DevRef; // [numKvHeads * G] f32, natural log
  scratch: DevRef; // partials of the chunks; 4-byte aligned, its own range (two streams need two scratches)
  scratchBytes: number;
  numKvHeads: number; // <= 256
  stream?: number;
}

/** LSE merge of two partials over disjoint token sets, as lseMerge, in device memory (reference: lseMergeRef). */
export interface CudaLseMergeOptions {
  rows: number;
  headDim: number;
  oA: DevRef; // [rows, headDim] f32
  lseA: DevRef; // [rows] f32
  oB: DevRef;
  lseB: DevRef;
  out: DevRef; // oA, oB, or a range disjoint from every input
  lseOut: DevRef; // lseA, lseB, or a disjoint range
  stream?: number;
}

/** Causal prefill attention: query t (position start + t) attends rows [0, start + t] of its KV head (reference: prefillRef). */
export interface CudaAttendPrefillOptions extends DevKvRegion {
  q: DevRef; // [T, numKvHeads * G, headDim] f32
  qRowStride?: number; // floats between tokens of q; default numKvHeads * G * headDim
  T: number;
  start: number; // start + T <= capacity: the queries' own K/V rows are written first (cudaKvWrite)
  scale: number;
  out: DevRef; // [T, numKvHeads * G, headDim] f32; may not overlap q, kv or lse
  lse: DevRef; // [T, numKvHeads * G] f32, natural log
  stream?: number;
  /** The tensor-core kernel where head_dim is 32, 64, 128 or 256 (default true); false forces the f32 kernel. */
  tensorCores?: boolean;
}

// cuda low-bit kernels
/**
 * The shape of one layer's device low-bit copy (see deviceLowBitLayout in src/kernels/device-lowbit-layout.ts):
 * numKvHeads sections, each KIVI keys (per channel over keyGroupSize tokens) and values (per token over
 * valueGroupSize channels) with fp16 zero/scale. Native re-derives the layout from these fields.
 */
export interface CudaLowBitShape {
  numKvHeads: number;
  headDim: number; // 32, 64, 128 or 256
  bits: 1 | 2 | 4;
  keyGroupSize: 32 | 64;
  valueGroupSize: number; // a multiple of 8 dividing headDim
  capacityTokens: number; // tokens per KV head, <= 2^26
  keysOnly?: boolean;
}

/** Offsets inside one section (head h's section starts at h * sectionBytes of the layer's copy). */
export interface CudaLowBitLayout {
  sectionBytes: number;
  layerBytes: number;
  keyCodes: number;
  keyZero: number;
  keyScale: number;
  valueCodes: number;
  valueZero: number;
  valueScale: number;
}

/**
 * KIVI quantization of tokens [first, first + tokens) of every KV head from the device KV region into the layer's
 * low-bit copy, bit-exact with quantizeKeysRef / quantizeValuesRef. Values: every token of the range (unless
 * keysOnly). Keys: exactly the key groups lying wholly inside the range, [ceil(first / keyGroupSize),
 * floor((first + tokens) / keyGroupSize)), returned as {firstKeyGroup, keyGroups}. Decode passes one token a step
 * (values only) and, when a group completes, the group's range (its values are rewritten with identical bytes).
 */
export interface CudaKiviQuantizeOptions extends CudaLowBitShape {
  kv: DevRef; // [numKvHeads, kvCapacity, 2 (K,V), headDim] f16/bf16, 16-byte aligned
  dtype: KvDtype;
  kvCapacity: number; // rows per KV head in kv
  kvFirstRow: number; // kv row of token `first`; token t is row kvFirstRow + t - first (no wrap)
  first: number; // token position in the low-bit copy
  tokens: number; // first + tokens <= capacityTokens; tokens <= kvCapacity - kvFirstRow
  lowBit: DevRef; // the layer's copy: layerBytes, 256-byte aligned
  stream?: number;
}

/** out[h, t] = mean over the G query heads of q_g . dequant(K_h)_t for t < numGroups * keyGroupSize (scoreKeysRef). */
export interface CudaKiviScoresOptions extends CudaLowBitShape {
  lowBit: DevRef; // 256-byte aligned
  groupSize: number; // G query heads per KV head
  q: DevRef; // [numKvHeads * G, headDim] f32
  numGroups: number; // quantized key groups to score, <= floor(capacityTokens / keyGroupSize)
  out: DevRef; // [numKvHeads, ldOut] f32; only the first numGroups * keyGroupSize of each row written
  ldOut: number; // >= numGroups * keyGroupSize
  stream?: number;
}

/** Per row the k best of positions [first, first + n) as absolute positions, best first, ties to the lower index, NaN last (topKRef). */
export interface CudaTopKOptions {
  scores: DevRef; // [rows, ld] f32
  rows: number; // <= 65535
  ld: number;
  first: number;
  n: number; // 1 .. 2^20, first + n <= ld
  k: number; // 1 .. min(n, 4096)
  /** Per-row lengths (rows <= 256): row r ranks [first, first + counts[r]), each in [k, n]. */
  counts?: Int32Array;
  out: DevRef; // [rows, k] int32
  mask?: DevRef; // u8 [rows, ld]: 1 at the chosen positions, 0 elsewhere
  stream?: number;
}

/**
 * Exact softmax attention of each KV head's G query heads over the dequantized tokens [first, end) minus the
 * excluded ones (kiviAttendRef), flash-decoding style: chunks of 512 tokens across the GPU, then a combine.
 * Nothing attended: out zeros, lse -inf. scratchBytes >= cudaKiviAttendScratchBytes({..., maxTokens: end - first, rows}).
 */
export interface CudaKiviAttendOptions extends CudaLowBitShape {
  lowBit: DevRef; // 256-byte aligned; not keysOnly
  groupSize: number; // G, 1 .. 16
  rows?: number; // query rows attending the same range and exclusions in one pass over the codes; rows * G <= 16; default 1
  q: DevRef; // row r at q + r * qRowStride floats: [numKvHeads * G, headDim] f32
  qRowStride?: number; // floats, >= numKvHeads * G * headDim (the default)
  scale: number; // softmax scale
  first: number;
  end: number; // <= floor(capacityTokens / keyGroupSize) * keyGroupSize
  exclude?: DevRef; // u8 [numKvHeads, ldExclude], nonzero = attended elsewhere (full precision)
  ldExclude?: number; // >= end, with exclude
  out: DevRef; // row r at out + r * outRowStride floats: [numKvHeads * G, headDim] f32
  outRowStride?: number; // floats, >= numKvHeads * G * headDim (the default)
  lse: DevRef; // [rows, numKvHeads * G] f32
  scratch: DevRef; // 16-byte aligned
  scratchBytes: number;
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
  /** One thread's fp32 multiply-adds a second at the active SIMD level, register-only chains timed for `seconds` (0.2). */
  fmaRate(o: { seconds?: number }): FmaRateResult;
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
  /** A non-blocking stream; priority high puts its blocks first (a step's critical path beside side work). */
  cudaStreamCreate(o?: { highPriority?: boolean }): number;
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
  cudaKvGatherDevice(o: CudaKvGatherDeviceOptions): number;
  /** Starts capturing the launches enqueued on `stream` into a graph (they are recorded, not run). */
  cudaGraphBegin(o: { stream?: number }): void;
  /** Ends the capture and instantiates it; the graph keeps the arenas it touches alive until cudaGraphFree. */
  cudaGraphEnd(o: { stream?: number }): number;
  /** Replays a graph on a stream (asynchronous, ordered like any launch). */
  cudaGraphLaunch(o: { graph: number; stream?: number }): void;
  cudaGraphFree(o: { graph: number }): void;
  /** cudaEmbed with the ids already on the device (the last step's argmax), clamped into [0, vocab). */
  cudaEmbedDevice(o: { table: DevRef; vocab: number; hidden: number; ids: DevRef; rows: number; out: DevRef; stream?: number }): void;
  cudaGemvBf16(o: CudaGemvBf16Options): void;
  // ---- model-side kernels (cuda_model_ops.cc) ----
  cudaUpload(o: CudaUploadOptions): void;
  cudaDownload(o: CudaDownloadOptions): Promise<Uint8Array>;
  cudaFillRandom(o: CudaFillRandomOptions): void;
  cudaEmbed(o: CudaEmbedOptions): void;
  cudaRmsNorm(o: CudaRmsNormOptions): void;
  cudaRope(o: CudaRopeOptions): void;
  cudaGemm(o: CudaGemmOptions): void;
  cudaSwiGlu(o: CudaSwiGluOptions): void;
  cudaAdd(o: CudaAddOptions): void;
  cudaArgmax(o: CudaArgmaxOptions): void;
  cudaAddBias(o: CudaAddBiasOptions): void;
  cudaSampleScratchBytes(o: { n: number }): number;
  cudaSample(o: CudaSampleOptions): void;
  // ---- attention kernels (cuda_attention_ops.cc) ----
  cudaKvWrite(o: CudaKvWriteOptions): void;
  cudaKvStoreHost(o: CudaKvStoreHostOptions): void;
  cudaAttendDecode(o: CudaAttendDecodeOptions): void;
  /** Scratch bytes cudaAttendDecode needs for any call with counts <= maxRows (pure arithmetic; works without a GPU). */
  cudaAttendScratchBytes(o: { numKvHeads: number; groupSize: number; headDim: number; maxRows: number }): number;
  cudaLseMerge(o: CudaLseMergeOptions): void;
  cudaAttendPrefill(o: CudaAttendPrefillOptions): void;
  // ---- low-bit kernels (cuda_lowbit_ops.cc) ----
  /** The section layout native derives from a shape (no GPU needed); equals deviceLowBitLayout(). */
  cudaLowBitLayout(o: CudaLowBitShape): CudaLowBitLayout;
  cudaKiviQuantize(o: CudaKiviQuantizeOptions): { firstKeyGroup: number; keyGroups: number };
  cudaKiviScores(o: CudaKiviScoresOptions): void;
  cudaTopK(o: CudaTopKOptions): void;
  cudaKiviAttend(o: CudaKiviAttendOptions): void;
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
