// cudaSample against sampling.ts sample(), its reference: vocab sizes off every block, ties, -Infinity (masked)
// logits, top-k past the vocab, top-p cuts, draws at 0 and near 1, and its argument checks.
import { afterAll, describe, expect, it } from 'vitest';
import { validateSampling, type SamplingOptions } from '../../src/engine/sampling.js';
import { native } from '../../src/native.js';
import { randn, rng } from '../helpers.js';
import { DevArena, acceptable, gpuUsable } from './cuda-helpers.js';

const devs: DevArena[] = [];
afterAll(() => {
  for (const d of devs.splice(0)) d.free();
});

async function drawOnDevice(logits: Float32Array, o: Required<SamplingOptions>, u: number, stream = 0): Promise<number> {
  const n = logits.length;
  const scratchBytes = native().cudaSampleScratchBytes({ n });
  const scratchAt = Math.ceil((n * 4 + 16) / 256) * 256;
  const d = new DevArena(scratchAt + scratchBytes);
  devs.push(d);
  native().cudaUpload({ dst: d.ref(0), data: logits, stream });
  native().cudaSample({ x: d.ref(0), n, temperature: o.temperature, topK: o.topK, topP: o.topP, u, out: d.ref(n * 4), scratch: d.ref(scratchAt), stream });
  const b = await native().cudaDownload({ src: d.ref(n * 4), bytes: 4, stream });
  return new Int32Array(b.buffer, b.byteOffset, 1)[0];
}

function logitsOf(n: number, seed: number, kind: 'normal' | 'ties' | 'masked' | 'spread'): Float32Array {
  const r = rng(seed);
  const x = Float32Array.from(randn(n, r));
  if (kind === 'ties') for (let i = 0; i < n; i++) x[i] = Math.round(x[i] * 2) / 2; // many equal logits: ties go by id
  if (kind === 'masked') for (let i = 0; i < n; i++) if (r() < 0.5) x[i] = -Infinity;
  if (kind === 'spread') for (let i = 0; i < n; i++) x[i] *= 30;
  if (kind === 'masked') x[n >> 1] = 1; // at least one live token
  return x;
}

describe.skipIf(!gpuUsable)('cudaSample', () => {
  const cases: Array<[number, 'normal' | 'ties' | 'masked' | 'spread', SamplingOptions]> = [
    [1, 'normal', { temperature: 1 }],
    [7, 'ties', { temperature: 0.7, topP: 0.5 }],
    [1000, 'normal', { temperature: 1, topK: 40, topP: 0.9 }],
    [1000, 'ties', { temperature: 2, topK: 1005 }],
    [1000, 'masked', { temperature: 0.5, topP: 0.3 }],
    [50_001, 'normal', { temperature: 1.3, topP: 0.95 }],
    [50_001, 'spread', { temperature: 0.9 }],
    [128_256, 'normal', { temperature: 1, topK: 50, topP: 0.9 }],
    [128_256, 'ties', { temperature: 5, topP: 0.99 }],
    [128_256, 'normal', { temperature: 1, topK: 1 }],
  ];
  cases.forEach(([n, kind, opts], i) =>
    it(`draws what sample() draws: vocab ${n}, ${kind} logits, ${JSON.stringify(opts)}`, async () => {
      const logits = logitsOf(n, 40 + i, kind);
      const o = validateSampling(opts);
      const r = rng(90 + i);
      for (const u of [0, 0.5, r(), r(), 1 - 2 ** -32]) {
        const got = await drawOnDevice(logits, o, u);
        const want = acceptable(logits, o, u);
        expect(want.has(got), `u ${u}: got ${got}, want one of ${[...want]}`).toBe(true);
      }
    }, 60_000));

  it('runs on a user stream', async () => {
    const s = native().cudaStreamCreate();
    try {
      const logits = logitsOf(3000, 7, 'normal');
      const o = validateSampling({ temperature: 0.8, topP: 0.8 });
      expect(acceptable(logits, o, 0.25).has(await drawOnDevice(logits, o, 0.25, s))).toBe(true);
    } finally {
      native().cudaStreamDestroy({ stream: s });
    }
  });

  it('refuses greedy, draws outside [0, 1), a top-p outside (0, 1] and a scratch too small', () => {
    const d = new DevArena(1 << 20);
    devs.push(d);
    const o = { x: d.ref(0), n: 1000, temperature: 1, u: 0.5, out: d.ref(4096), scratch: d.ref(8192) };
    expect(() => native().cudaSample({ ...o, temperature: 0 })).toThrow(/Expected a finite number > 0 \(greedy is cudaArgmax\) for cudaSample.temperature but received 0/);
    expect(() => native().cudaSample({ ...o, u: 1 })).toThrow(/Expected a number in \[0, 1\) for cudaSample.u but received 1/);
    expect(() => native().cudaSample({ ...o, topP: 0 })).toThrow(/Expected a number in \(0, 1\] for cudaSample.topP but received 0/);
    expect(() => native().cudaSample({ ...o, scratch: d.ref((1 << 20) - 1024) })).toThrow(/cudaSample.scratch/);
  });
});
