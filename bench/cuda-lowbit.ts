// CUDA low-bit kernel bench at the 8B Llama decode shape (8 KV heads x G 4, head_dim 128, 131072 tokens, key groups
// of 64, one value group per token): cudaKiviAttend (1 and 2 query rows), cudaKiviScores and cudaTopK, against a
// device copy measured in the same run.
// Usage (GPU machine): npx tsc -p tsconfig.json && node dist/bench/cuda-lowbit.js [--json] [--quick]
//
// Conventions (as bench/cuda-kernels.ts):
// - Device copy GB/s counts read + write: 2 x bytes copied / s (cudaMemcpyAsync D2D).
// - A kernel's GB/s = the bytes it must read (codes, zero/scale, exclude mask, scores) / s; ratio = / device-copy GB/s.
// - Every time is GPU time between events on one stream held behind a queue of device copies on another, so every
//   rep is enqueued before the GPU starts. Calls cycle through several copies of the layer so that no rep finds
//   its codes in the 50 MB L2, as in a decode step that walks 32 layers.
import { cudaKiviAttendScratchBytes, deviceLowBitLayout, type DeviceLowBitShape } from '../src/kernels/device-lowbit-layout.js';
import { seededRandom } from '../src/engine/sampling.js';
import { randn } from '../src/model/random-model.js';
import { native } from '../src/native.js';
import { f32ToF16 } from '../src/kernels/half.js';
import { DevArena, Timer } from './cuda-timing.js';
import { MiB, gbPerS, median } from './memcpy.js';

const H = 8;
const G = 4;
const D = 128;
const N = 131072;
const KG = 64;
const TOPK = 64;
const SINKS = 4;
const WINDOW = 64;
const Q_ROW_STRIDE = (H * G + 2 * H) * D; // floats between the rows' q in the fused qkv activations (Llama-3.1-8B)

interface Row {
  kernel: string;
  bits: number;
  bytes: number; // read per call
  us: number; // median µs per call
  gbPerS: number;
  ratio: number; // to device copy
}

/** One layer's copy with random codes and plausible fp16 zero/scale, written `copies` times. */
function fillLayers(lb: DevArena, s: DeviceLowBitShape, layerBytes: number, copies: number, r: () => number): void {
  const L = deviceLowBitLayout(s);
  const sec = new Uint8Array(L.sectionBytes);
  for (let i = 0; i < sec.length; i += 4) new DataView(sec.buffer).setUint32(i, Math.floor(r() * 2 ** 32), true);
  const half = (at: number, count: number, f: () => number) => {
    const v = new Uint16Array(sec.buffer, at, count);
    for (let i = 0; i < count; i++) v[i] = f32ToF16(f());
  };
  const groups = Math.floor(N / KG);
  const g = randn(4096, r);
  half(L.keyZero, groups * D, () => g[Math.floor(r() * 4096)]!);
  half(L.keyScale, groups * D, () => 0.1 + Math.abs(g[Math.floor(r() * 4096)]!));
  half(L.valueZero, N * (D / s.valueGroupSize), () => g[Math.floor(r() * 4096)]!);
  half(L.valueScale, N * (D / s.valueGroupSize), () => 0.1 + Math.abs(g[Math.floor(r() * 4096)]!));
  for (let c = 0; c < copies; c++) for (let h = 0; h < H; h++) lb.write(c * layerBytes + h * L.sectionBytes, sec);
}

async function main(): Promise<void> {
  const json = process.argv.includes('--json');
  const quick = process.argv.includes('--quick');
  const info = native().buildInfo().cuda;
  if (info.deviceCount === 0) {
    console.error(`cuda-lowbit bench: ${info.built ? 'no usable GPU' : 'CUDA not built'}: ${info.reason}`);
    process.exitCode = 1;
    return;
  }
  const reps = quick ? 10 : 30;
  const r = seededRandom(11);
  const d2dBytes = 256 * MiB;
  using gateDev = new DevArena(2 * d2dBytes);
  const t = new Timer(gateDev, d2dBytes);
  const d2dMs = median(await t.time(10, 2, () => native().cudaCopyD2D({ src: gateDev.ref(0), dst: gateDev.ref(d2dBytes), bytes: d2dBytes, stream: t.stream })));
  t.copyMs = d2dMs;
  const d2d = 2 * gbPerS(d2dBytes, d2dMs);

  // q rows, exclude mask (64 ones per head), scores, top-k output, scratch.
  const ldEx = N;
  const scratchBytes = cudaKiviAttendScratchBytes({ numKvHeads: H, groupSize: G, headDim: D, maxTokens: N, rows: 2 });
  const qAt = 0, outAt = 1 * MiB, lseAt = 2 * MiB, exAt = 3 * MiB, scAt = exAt + H * ldEx, picksAt = scAt + H * N * 4, maskAt = picksAt + MiB;
  const scratchAt = maskAt + H * N + 256;
  using io = new DevArena(scratchAt + scratchBytes);
  io.write(qAt, randn(2 * Q_ROW_STRIDE, r));
  const mask = new Uint8Array(H * ldEx);
  for (let h = 0; h < H; h++) for (let j = 0; j < TOPK; j++) mask[h * ldEx + SINKS + Math.floor(r() * (N - WINDOW - SINKS))] = 1;
  io.write(exAt, mask);
  io.write(scAt, randn(H * N, r));

  const rows: Row[] = [];
  for (const bits of [1, 2] as const) {
    const s: DeviceLowBitShape = { numKvHeads: H, headDim: D, bits, keyGroupSize: KG, valueGroupSize: D, capacityTokens: N };
    const L = deviceLowBitLayout(s);
    const copies = Math.max(2, Math.ceil((256 * MiB) / L.layerBytes));
    using lb = new DevArena(copies * L.layerBytes);
    fillLayers(lb, s, L.layerBytes, copies, r);
    const lowBit = (i: number) => lb.ref((i % copies) * L.layerBytes);
    const rowB = (D * bits) / 8;
    const keyBytes = H * (N * rowB + (N / KG) * D * 4);
    const valueBytes = H * (N * rowB + N * 4);
    const attendBytes = keyBytes + valueBytes + H * N; // + the exclude mask
    const first = SINKS, end = N - WINDOW;
    const attend = (nRows: 1 | 2) => (i: number) =>
      native().cudaKiviAttend({
        ...s, lowBit: lowBit(i), groupSize: G, rows: nRows, q: io.ref(qAt), qRowStride: Q_ROW_STRIDE, scale: 1 / Math.sqrt(D), first, end,
        exclude: io.ref(exAt), ldExclude: ldEx, out: io.ref(outAt), lse: io.ref(lseAt), scratch: io.ref(scratchAt), scratchBytes, stream: t.stream,
      });
    const add = (kernel: string, bytes: number, ms: number[]) => {
      const us = median(ms) * 1000;
      const gb = gbPerS(bytes, us / 1000);
      rows.push({ kernel, bits, bytes, us, gbPerS: gb, ratio: gb / d2d });
    };
    add('cudaKiviAttend rows 1', attendBytes, await t.time(reps, 3, attend(1)));
    add('cudaKiviAttend rows 2', attendBytes, await t.time(reps, 3, attend(2)));
    add('cudaKiviScores', keyBytes, await t.time(reps, 3, (i) =>
      native().cudaKiviScores({ ...s, keysOnly: false, lowBit: lowBit(i), groupSize: G, q: io.ref(qAt), numGroups: N / KG, out: io.ref(scAt), ldOut: N, stream: t.stream })));
  }
  const n = N - WINDOW - SINKS;
  const ms = await t.time(reps, 3, () =>
    native().cudaTopK({ scores: io.ref(scAt), rows: H, ld: N, first: SINKS, n, k: TOPK, out: io.ref(picksAt), mask: io.ref(maskAt), stream: t.stream }));
  const us = median(ms) * 1000, bytes = H * n * 4;
  rows.push({ kernel: 'cudaTopK (8 rows, k 64, mask)', bits: 0, bytes, us, gbPerS: gbPerS(bytes, us / 1000), ratio: gbPerS(bytes, us / 1000) / d2d });
  t.dispose();

  const result = {
    gpu: info.deviceName, deviceCopyGbPerS: d2d,
    shape: { numKvHeads: H, groupSize: G, headDim: D, tokens: N, keyGroupSize: KG, valueGroupSize: D, attend: [SINKS, N - WINDOW], topK: TOPK }, rows,
  };
  if (json) {
    console.log(JSON.stringify(result, null, 2));
    return;
  }
  console.log(`GPU ${info.deviceName}; device copy (read + write) ${d2d.toFixed(0)} GB/s`);
  console.log(`shape: ${H} KV heads x G ${G}, head_dim ${D}, ${N} tokens, key groups ${KG}, value groups ${D}; attend [${SINKS}, ${N - WINDOW}) minus ${TOPK} per head; top-${TOPK}`);
  const cells = [['kernel', 'bits', 'MB read', 'us/call', 'GB/s', 'ratio'], ...rows.map((x) => [x.kernel, x.bits ? String(x.bits) : '-', (x.bytes / 1e6).toFixed(1), x.us.toFixed(1), x.gbPerS.toFixed(0), x.ratio.toFixed(3)])];
  const width = cells[0]!.map((_, c) => Math.max(...cells.map((row) => row[c]!.length)));
  console.log(cells.map((row) => row.map((v, c) => (c === 0 ? v.padEnd(width[c]!) : v.padStart(width[c]!))).join('  ')).join('\n'));
}

await main();
