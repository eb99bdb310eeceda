// Host cost of one call of each kernel entry point a decode step makes (argument parsing, checks and the launch),
// on tiny shapes so the GPU keeps up: what bounds a batch's step when the host is what it waits for.
// Usage (GPU machine): node dist/bench/cuda-calls.js [--n 2000]
import { performance } from 'node:perf_hooks';
import { parseArgs } from 'node:util';
import { HostArena } from '../src/arena.js';
import { DeviceArena, DeviceLayout } from '../src/cuda/device-arena.js';
import { cudaAttendScratchBytes } from '../src/kernels/device-attention-ref.js';
import { deviceLowBitLayout } from '../src/kernels/device-lowbit-layout.js';
import { native, type KvRegion } from '../src/native.js';

const { values } = parseArgs({ options: { n: { type: 'string', default: '2000' } } });
const N = Number(values.n);
const H = 8; // KV heads
const G = 4;
const D = 128;
const CAP = 4096; // tokens
const BLOCK = 64;
const K = 64; // picks per head

async function main(): Promise<void> {
  const stream = native().cudaStreamCreate({ highPriority: true });
  const lowBit = { numKvHeads: H, headDim: D, bits: 1 as const, keyGroupSize: 64 as const, valueGroupSize: D, capacityTokens: CAP, keysOnly: true };
  const a = DeviceArena.create(new DeviceLayout()
    .add('kv', H * CAP * 4 * D).add('qkv', (H * G + 2 * H) * D * 4).add('out', H * G * D * 4).add('lse', H * G * 4)
    .add('scratch', cudaAttendScratchBytes({ numKvHeads: H, groupSize: G, headDim: D, maxRows: CAP }))
    .add('lowBit', deviceLowBitLayout(lowBit).layerBytes).add('scores', H * CAP * 4).add('picks', H * K * 4).add('table', H * K * 8)
    .add('blockTable', (CAP / BLOCK) * 4).add('x', 4096 * 4).add('y', 4096 * 4).add('w', 4096 * 4096 * 2).add('norm', 4096 * 2));
  const host = new HostArena(H * CAP * 4 * D, { pin: true });
  const region: KvRegion = { handle: host.handle, offset: 0, numBlocks: CAP / BLOCK, numKvHeads: H, headDim: D, blockSize: BLOCK, dtype: 'bf16' };
  const blockIds = Int32Array.from({ length: CAP / BLOCK }, (_, i) => i);
  native().cudaArenaWrite({ handle: a.handle, offset: a.ref('blockTable').devOffset, data: new Uint8Array(blockIds.buffer) });
  native().cudaFillRandom({ dst: a.ref('qkv'), count: (H * G + 2 * H) * D, dtype: 'f32', seed: 1, scale: 1, stream });
  native().cudaFillRandom({ dst: a.ref('kv'), count: H * CAP * 2 * D, dtype: 'bf16', seed: 2, scale: 1, stream });
  native().cudaFillRandom({ dst: a.ref('w'), count: 4096 * 4096, dtype: 'bf16', seed: 3, scale: 0.01, stream });
  native().cudaFillRandom({ dst: a.ref('norm'), count: 4096, dtype: 'bf16', seed: 4, scale: 1, stream });
  native().cudaFillRandom({ dst: a.ref('x'), count: 4096, dtype: 'f32', seed: 5, scale: 1, stream });
  const shape = { numKvHeads: H, headDim: D, dtype: 'bf16' as const, stream };
  const k = a.ref('qkv', H * G * D * 4);
  const v = a.ref('qkv', (H * G + H) * D * 4);
  const counts = new Int32Array(H).fill(200);
  native().cudaKiviQuantize({ ...lowBit, lowBit: a.ref('lowBit'), kv: a.ref('kv'), dtype: 'bf16', kvCapacity: CAP, kvFirstRow: 0, first: 0, tokens: CAP, stream });
  native().cudaTopK({ scores: a.ref('scores'), rows: H, ld: CAP, first: 0, n: CAP, k: K, out: a.ref('picks'), stream });
  await native().cudaStreamSynchronize({ stream });
  const kvWrite = { ...shape, k, v, tokens: 1, dst: a.ref('kv'), capacity: CAP, slot: 7 };
  const ops: Record<string, () => void> = {
    'cudaCopyD2D 16 KiB': () => native().cudaCopyD2D({ src: a.ref('x'), dst: a.ref('y'), bytes: 4096 * 4, stream }),
    'cudaEventRecord + free': () => native().cudaEventFree({ event: native().cudaEventRecord({ stream }) }),
    'cudaEventRecord (timing) + free': () => native().cudaEventFree({ event: native().cudaEventRecord({ stream, timing: true }) }),
    'cudaKvWrite 1 token': () => native().cudaKvWrite({ ...shape, k, v, tokens: 1, dst: a.ref('kv'), capacity: CAP, slot: 7 }),
    'cudaKvWrite, options object reused': () => native().cudaKvWrite(kvWrite),
    'cudaKvStoreHost 1 token': () => native().cudaKvStoreHost({ ...region, k, v, tokens: 1, blockIds, start: 100, stream }),
    'cudaAttendDecode 200 rows': () => native().cudaAttendDecode({
      ...shape, kv: a.ref('kv'), capacity: CAP, groupSize: G, counts, q: a.ref('qkv'), scale: 0.08, out: a.ref('out'), lse: a.ref('lse'),
      scratch: a.ref('scratch'), scratchBytes: a.bytesOf('scratch'),
    }),
    'cudaKiviScores 4096 tokens': () => native().cudaKiviScores({ ...lowBit, lowBit: a.ref('lowBit'), groupSize: G, q: a.ref('qkv'), numGroups: CAP / 64, out: a.ref('scores'), ldOut: CAP, stream }),
    'cudaTopK 64 of 4096': () => native().cudaTopK({ scores: a.ref('scores'), rows: H, ld: CAP, first: 4, n: CAP - 100, k: K, out: a.ref('picks'), stream }),
    'cudaKvGatherDevice 64 a head': () => native().cudaKvGatherDevice({
      ...region, blockTable: a.ref('blockTable'), tableLen: CAP / BLOCK, positions: a.ref('picks'), n: K, dst: a.ref('kv'), dstCapacity: CAP, dstSlot: 0, table: a.ref('table'), stream,
    }),
    'cudaRmsNorm 1 x 4096': () => native().cudaRmsNorm({ x: a.ref('x'), weight: a.ref('norm'), out: a.ref('y'), rows: 1, n: 4096, eps: 1e-5, stream }),
    'cudaGemm 1 x 4096 x 4096': () => native().cudaGemm({ w: a.ref('w'), x: a.ref('x'), y: a.ref('y'), m: 1, n: 4096, k: 4096, stream }),
  };
  for (const [name, op] of Object.entries(ops)) {
    for (let i = 0; i < 50; i++) op();
    await native().cudaStreamSynchronize({ stream });
    const t0 = performance.now();
    for (let i = 0; i < N; i++) op();
    const host = performance.now() - t0;
    await native().cudaStreamSynchronize({ stream });
    const all = performance.now() - t0;
    console.log(`${name.padEnd(34)} host ${((1000 * host) / N).toFixed(2).padStart(7)} us/call   with the GPU ${((1000 * all) / N).toFixed(2).padStart(7)} us/call`);
  }
  a.free();
  host.dispose();
  native().cudaStreamDestroy({ stream });
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
