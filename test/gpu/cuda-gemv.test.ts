// cudaGemvBf16 against gemvBf16Ref on a real GPU: shapes off every tile size (K = 1, odd N and K, each rows-per-warp
// variant), misaligned operands (the generic path), extreme values (bf16 max, subnormals, inf, NaN) and a user stream.
import { afterEach, describe, expect, it } from 'vitest';
import { f32ToBf16 } from '../../src/kernels/half.js';
import { gemvBf16AbsRef, gemvBf16Ref } from '../../src/kernels/gemv.js';
import { native } from '../../src/native.js';
import { randn, rng } from '../helpers.js';
import { DevArena, gpuUsable } from './cuda-helpers.js';

const devs: DevArena[] = [];
afterEach(async () => {
  if (gpuUsable) await native().cudaStreamSynchronize({});
  for (const d of devs.splice(0)) d.free();
});

function toBf16(x: Float32Array): Uint16Array {
  return Uint16Array.from(x, (v) => f32ToBf16(v));
}

/** Runs the kernel with W at wOff and x at xOff (bytes) in one arena, y in another; returns y. */
async function gemv(w: Uint16Array, rows: number, cols: number, x: Float32Array, opts: { wOff?: number; xOff?: number; stream?: number } = {}): Promise<Float32Array> {
  const wOff = opts.wOff ?? 0;
  const xOff = opts.xOff ?? Math.ceil((wOff + w.byteLength) / 256) * 256;
  const a = new DevArena(xOff + x.byteLength);
  const y = new DevArena(rows * 4);
  devs.push(a, y);
  a.write(wOff, w);
  a.write(xOff, x);
  native().cudaGemvBf16({ w: a.ref(wOff), rows, cols, x: a.ref(xOff), y: y.ref(0), stream: opts.stream });
  await native().cudaStreamSynchronize({ stream: opts.stream ?? 0 });
  return y.readF32(0, rows);
}

/** Every row within f32 accumulation error of the fp64 reference; NaN and +-inf must match exactly. */
function expectClose(got: Float32Array, w: Uint16Array, rows: number, cols: number, x: Float32Array, label: string): void {
  const want = gemvBf16Ref(w, rows, cols, x);
  const scale = gemvBf16AbsRef(w, rows, cols, x);
  for (let r = 0; r < rows; r++) {
    if (!Number.isFinite(want[r]) || !Number.isFinite(scale[r])) {
      expect(got[r], `${label} row ${r}`).toBe(want[r]); // toBe uses Object.is: NaN equals NaN
      continue;
    }
    const err = Math.abs(got[r] - want[r]);
    if (err > 1e-5 * scale[r] + 1e-40) expect.fail(`${label} row ${r}: got ${got[r]}, want ${want[r]} (error ${err}, scale ${scale[r]})`);
  }
}

describe.skipIf(!gpuUsable)('cudaGemvBf16', () => {
  // [rows, cols]: K = 1, K below one chunk, K not a multiple of the 256-element warp pass, N below and past the
  // rows-per-warp thresholds (1, 2 and 4 rows per warp on an H100: N >= 8448 and N >= 16896).
  const shapes: [number, number][] = [[1, 1], [5, 1], [1, 8], [3, 13], [17, 1000], [64, 4096], [33, 4104], [7, 14336], [4100, 264], [9000, 1032], [17000, 520]];
  for (const [rows, cols] of shapes)
    it(`equals the reference for ${rows} x ${cols}`, async () => {
      const r = rng(rows * 31 + cols);
      const w = toBf16(randn(rows * cols, r));
      const x = randn(cols, r);
      expectClose(await gemv(w, rows, cols, x), w, rows, cols, x, `${rows}x${cols}`);
    }, 60_000);

  it('takes the generic path for misaligned operands and gives the same answer', async () => {
    const r = rng(5);
    const rows = 37, cols = 64;
    const w = toBf16(randn(rows * cols, r));
    const x = randn(cols, r);
    for (const [wOff, xOff] of [[2, 8192], [0, 8196], [6, 8200]])
      expectClose(await gemv(w, rows, cols, x, { wOff, xOff }), w, rows, cols, x, `w at ${wOff}, x at ${xOff}`);
  });

  it('handles extreme values: bf16 max, subnormals, signed zeros, inf, NaN', async () => {
    const cols = 40, rows = 8;
    const w = new Uint16Array(rows * cols);
    const x = new Float32Array(cols).map((_, k) => (k % 2 ? 1e-3 : -2e-3));
    for (let k = 0; k < cols; k++) {
      w[0 * cols + k] = k % 3 ? 0x7f7f : 0xff7f; // +-3.39e38 (bf16 max) times ~1e-3: large but finite sums
      w[1 * cols + k] = k === 7 ? 0x7f80 : 0x3f80; // one +inf -> +-inf
      w[2 * cols + k] = k === 3 ? 0x7f80 : k === 9 ? 0xff80 : 0; // +inf and -inf -> NaN
      w[3 * cols + k] = k === 20 ? 0x7fc0 : 0x4000; // NaN
      w[4 * cols + k] = k % 2 ? 0x0001 : 0x8003; // subnormals
      w[5 * cols + k] = k % 2 ? 0x8000 : 0x0000; // signed zeros
      w[6 * cols + k] = f32ToBf16(1 + k / 64);
      w[7 * cols + k] = f32ToBf16(k % 2 ? 1e30 : -1e30);
    }
    const got = await gemv(w, rows, cols, x);
    expectClose(got, w, rows, cols, x, 'extremes');
    expect(Number.isNaN(got[2])).toBe(true);
    expect(Math.abs(got[1])).toBe(Infinity);

    const xNaN = Float32Array.from(x);
    xNaN[5] = NaN; // poisons every row
    const all = await gemv(w, rows, cols, xNaN);
    for (let r = 0; r < rows; r++) expect(Number.isNaN(all[r]), `row ${r}`).toBe(true);
  });

  it('runs on a user stream and refuses y overlapping w or x', async () => {
    const r = rng(9);
    const rows = 300, cols = 512;
    const w = toBf16(randn(rows * cols, r));
    const x = randn(cols, r);
    const s = native().cudaStreamCreate();
    expectClose(await gemv(w, rows, cols, x, { stream: s }), w, rows, cols, x, 'stream');
    native().cudaStreamDestroy({ stream: s });
    const a = new DevArena(rows * cols * 2 + cols * 4 + rows * 4);
    devs.push(a);
    expect(() => native().cudaGemvBf16({ w: a.ref(0), rows, cols, x: a.ref(rows * cols * 2), y: a.ref(rows * cols * 2 - 4) }))
      .toThrow(/Expected a range that overlaps neither w nor x for cudaGemvBf16.y/);
    expect(() => native().cudaGemvBf16({ w: a.ref(1), rows, cols, x: a.ref(rows * cols * 2 + 4), y: a.ref(0) }))
      .toThrow('Expected an offset aligned to 2 bytes for cudaGemvBf16.w.devOffset but received 1');
  });
});
