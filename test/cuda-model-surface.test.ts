// The model-side CUDA kernels' native surface on any machine: every entry exists, bad fields are named before the GPU
// is looked for (wrong types, sizes, ids, dtypes, host handles), and without a usable GPU each well-formed call fails
// with the "no usable GPU" / "CUDA not built" reason and never crashes. Also checks fillRandomRef's hash on its own.
import { describe, expect, it } from 'vitest';
import { HostArena } from '../src/arena.js';
import { KvoffArgumentError, KvoffDeviceError, KvoffDisposedError, KvoffError, KvoffRangeError } from '../src/errors.js';
import { fillRandomRef, mix32 } from '../src/kernels/model-ref.js';
import { native, type DevRef } from '../src/native.js';

const gpuUsable = native().buildInfo().cuda.deviceCount > 0;
const DEV = 0x40000001; // the first device arena handle a process hands out
const ref = (devOffset: number, devHandle = DEV): DevRef => ({ devHandle, devOffset });

function thrown(f: () => unknown): unknown {
  try {
    const r = f();
    if (r instanceof Promise) r.catch(() => undefined);
  } catch (err) {
    return err;
  }
  throw new Error('expected a throw');
}

type Call = (o: Record<string, unknown>) => unknown;
const n = () => native() as unknown as Record<string, Call>;

/** A well-formed call of every entry (they all fail without a GPU, and pass argument checking with one). */
const GOOD: Record<string, Record<string, unknown>> = {
  cudaUpload: { dst: ref(0), data: new Float32Array(4) },
  cudaDownload: { src: ref(0), bytes: 16 },
  cudaFillRandom: { dst: ref(0), count: 64, dtype: 'bf16', seed: 7, scale: 0.02 },
  cudaEmbed: { table: ref(0), vocab: 10, hidden: 8, ids: Int32Array.of(0, 9, 3), out: ref(4096) },
  cudaEmbedDevice: { table: ref(0), vocab: 10, hidden: 8, ids: ref(8192), rows: 2, out: ref(4096) },
  cudaRmsNorm: { x: ref(0), weight: ref(4096), out: ref(0), rows: 2, n: 16, eps: 1e-5 },
  cudaRope: { x: ref(0), rows: 2, heads: 2, headDim: 8, cos: ref(4096), sin: ref(8192) },
  cudaGemm: { w: ref(0), x: ref(4096), y: ref(8192), m: 2, n: 8, k: 16 },
  cudaSwiGlu: { gateUp: ref(0), out: ref(4096), m: 2, inter: 8 },
  cudaAdd: { a: ref(0), b: ref(64), out: ref(0), n: 16 },
  cudaArgmax: { x: ref(0), m: 2, n: 16, out: ref(4096) },
};
const ENTRIES = Object.keys(GOOD);

describe('CUDA model-kernel surface', () => {
  it('exports every entry point', () => {
    for (const name of ENTRIES) expect(typeof n()[name], name).toBe('function');
  });

  it.skipIf(gpuUsable)('without a usable GPU every well-formed call fails with the reason, naming the call', () => {
    const info = native().buildInfo().cuda;
    const why = info.built ? 'no usable GPU' : 'CUDA not built';
    for (const name of ENTRIES) {
      const e = thrown(() => n()[name](GOOD[name]));
      expect(e, name).toBeInstanceOf(KvoffDeviceError);
      expect((e as Error).message, name).toContain(`Expected a usable CUDA GPU for ${name} but received none: ${why} (${info.reason})`);
    }
    // With a stream too: the stream is looked up only after the GPU check.
    expect(thrown(() => n().cudaGemm({ ...GOOD.cudaGemm, stream: 3 }))).toBeInstanceOf(KvoffDeviceError);
  });

  it('names missing and mistyped fields', () => {
    expect(() => n().cudaGemm(undefined as unknown as Record<string, unknown>)).toThrow('Expected an options object for cudaGemm() but received undefined');
    const { m: _m, ...noM } = GOOD.cudaGemm;
    expect(() => n().cudaGemm(noM)).toThrow('Expected an integer for cudaGemm.m but received undefined');
    expect(() => n().cudaGemm({ ...GOOD.cudaGemm, k: '16' })).toThrow('Expected an integer for cudaGemm.k but received "16"');
    expect(() => n().cudaGemm({ ...GOOD.cudaGemm, accumulate: 1 })).toThrow('Expected a boolean for cudaGemm.accumulate but received 1');
    expect(() => n().cudaGemm({ ...GOOD.cudaGemm, w: 5 })).toThrow('Expected a device reference {devHandle, devOffset} for cudaGemm.w but received 5');
    expect(thrown(() => n().cudaGemm({ ...GOOD.cudaGemm, y: { devHandle: DEV } }))).toMatchObject({
      field: 'cudaGemm.y.devOffset', expected: 'an integer', received: 'undefined',
    });
    expect(() => n().cudaRmsNorm({ ...GOOD.cudaRmsNorm, eps: NaN })).toThrow('Expected a finite number for cudaRmsNorm.eps but received NaN');
    expect(() => n().cudaRmsNorm({ ...GOOD.cudaRmsNorm, eps: -1 })).toThrow('Expected a finite number >= 0 for cudaRmsNorm.eps but received -1');
    expect(() => n().cudaFillRandom({ ...GOOD.cudaFillRandom, scale: Infinity })).toThrow(KvoffArgumentError);
    expect(() => n().cudaFillRandom({ ...GOOD.cudaFillRandom, scale: 1e39 })).toThrow(/^Expected a number that fits in f32 for cudaFillRandom.scale but received 9\.99/);
    expect(() => n().cudaUpload({ dst: ref(0), data: [1, 2] })).toThrow('Expected an ArrayBufferView (a typed array or DataView) for cudaUpload.data but received an array');
    expect(() => n().cudaUpload({ dst: ref(0), data: new ArrayBuffer(8) })).toThrow(/for cudaUpload.data but received an ArrayBuffer/);
    expect(() => n().cudaEmbed({ ...GOOD.cudaEmbed, ids: [1, 2] })).toThrow('Expected Int32Array for cudaEmbed.ids but received an array');
    expect(() => n().cudaEmbed({ ...GOOD.cudaEmbed, ids: new Uint32Array(2) })).toThrow('Expected Int32Array for cudaEmbed.ids but received Uint32Array(2)');
    expect(() => n().cudaEmbed({ ...GOOD.cudaEmbed, ids: new Int32Array(0) })).toThrow('Expected a non-empty Int32Array for cudaEmbed.ids but received Int32Array(0)');
    expect(() => n().cudaArgmax({ ...GOOD.cudaArgmax, stream: 'a' })).toThrow('Expected an integer for cudaArgmax.stream but received "a"');
  });

  it('checks sizes, dtypes, ids and handles before the GPU', () => {
    expect(() => n().cudaGemm({ ...GOOD.cudaGemm, m: 0 })).toThrow('Expected cudaGemm.m in [1, 2147483647] but received 0');
    expect(thrown(() => n().cudaGemm({ ...GOOD.cudaGemm, n: -3 }))).toBeInstanceOf(KvoffRangeError);
    expect(() => n().cudaGemm({ ...GOOD.cudaGemm, k: 2 ** 31 })).toThrow('Expected cudaGemm.k in [1, 2147483647] but received 2147483648');
    // Each dimension fits but the product does not.
    expect(() => n().cudaGemm({ ...GOOD.cudaGemm, n: 2 ** 31 - 1, k: 2 ** 31 - 1 })).toThrow(/Expected a buffer of at most 2\^46 bytes for cudaGemm.w/);
    expect(() => n().cudaArgmax({ ...GOOD.cudaArgmax, m: 2 ** 30, n: 2 ** 30 })).toThrow(/at most 2\^46 bytes for cudaArgmax.x/);
    expect(() => n().cudaSwiGlu({ ...GOOD.cudaSwiGlu, inter: 2 ** 30 })).toThrow('Expected cudaSwiGlu.inter in [1, 1073741823] but received 1073741824');
    expect(() => n().cudaRope({ ...GOOD.cudaRope, headDim: 7 })).toThrow('Expected an even number (RoPE rotates two halves) for cudaRope.headDim but received 7');
    expect(() => n().cudaRope({ ...GOOD.cudaRope, rowStride: 15 })).toThrow('Expected cudaRope.rowStride in [16, 1099511627776] but received 15');
    expect(() => n().cudaDownload({ src: ref(0), bytes: -1 })).toThrow('Expected cudaDownload.bytes in [0, 2147483648] but received -1');
    expect(() => n().cudaFillRandom({ ...GOOD.cudaFillRandom, dtype: 'fp8' })).toThrow('Expected "f32", "bf16" or "f16" for cudaFillRandom.dtype but received "fp8"');
    expect(() => n().cudaFillRandom({ ...GOOD.cudaFillRandom, dtype: undefined })).toThrow(/for cudaFillRandom.dtype but received undefined/);
    expect(() => n().cudaFillRandom({ ...GOOD.cudaFillRandom, seed: 2 ** 32 })).toThrow('Expected cudaFillRandom.seed in [0, 4294967295] but received 4294967296');
    expect(() => n().cudaFillRandom({ ...GOOD.cudaFillRandom, count: 0 })).toThrow(KvoffRangeError);
    // Token ids outside [0, vocab): named with the range.
    expect(() => n().cudaEmbed({ ...GOOD.cudaEmbed, ids: Int32Array.of(0, 10) })).toThrow('Expected cudaEmbed.ids in [0, 9] but received 10');
    expect(() => n().cudaEmbed({ ...GOOD.cudaEmbed, ids: Int32Array.of(-1) })).toThrow('Expected cudaEmbed.ids in [0, 9] but received -1');
    expect(() => n().cudaEmbedDevice({ ...GOOD.cudaEmbedDevice, rows: 0 })).toThrow('Expected cudaEmbedDevice.rows in [1, 1048576] but received 0');
    expect(() => n().cudaEmbedDevice({ ...GOOD.cudaEmbedDevice, ids: Int32Array.of(1) })).toThrow(/cudaEmbedDevice.ids/);
    // A host arena's handle where a device arena belongs.
    const host = new HostArena(4096);
    try {
      const e = thrown(() => n().cudaAdd({ ...GOOD.cudaAdd, b: ref(0, host.handle) }));
      expect(e).toBeInstanceOf(KvoffArgumentError);
      expect((e as Error).message).toBe(`Expected a device arena handle (from cudaArenaCreate) for cudaAdd.b.devHandle but received ${host.handle}, which is a host arena's handle`);
    } finally {
      host.dispose();
    }
    expect(() => n().cudaAdd({ ...GOOD.cudaAdd, out: ref(-4) })).toThrow('Expected cudaAdd.out.devOffset in [0, 9007199254740991] but received -4');
    expect(() => n().cudaAdd({ ...GOOD.cudaAdd, a: { devHandle: 0, devOffset: 0 } })).toThrow('Expected cudaAdd.a.devHandle in [1, 4294967295] but received 0');
  });

  it.skipIf(!gpuUsable)('with a GPU, refuses unknown arenas, misalignment and overlaps by field', () => {
    const a = native().cudaArenaCreate({ bytes: 1 << 16 });
    try {
      const r = (o: number): DevRef => ref(o, a.handle);
      expect(thrown(() => n().cudaGemm({ ...GOOD.cudaGemm, w: ref(0, a.handle + 1000) }))).toBeInstanceOf(KvoffDisposedError);
      expect(() => n().cudaGemm({ ...GOOD.cudaGemm, w: r(1), x: r(4096), y: r(8192) })).toThrow('Expected an offset aligned to 2 bytes for cudaGemm.w.devOffset but received 1');
      expect(() => n().cudaGemm({ ...GOOD.cudaGemm, w: r(0), x: r(4096), y: r(4096 + 64) })).toThrow(/Expected a range that overlaps neither w nor x for cudaGemm.y/);
      expect(() => n().cudaAdd({ a: r(0), b: r(64), out: r(4), n: 16 })).toThrow(/Expected a range equal to a or apart from it for cudaAdd.out/);
      expect(() => n().cudaSwiGlu({ gateUp: r(0), out: r(0), m: 2, inter: 8 })).toThrow(/Expected a range that does not overlap gateUp for cudaSwiGlu.out/);
      expect(() => n().cudaUpload({ dst: r((1 << 16) - 2), data: new Uint8Array(4) })).toThrow(/Expected cudaUpload.dst to fit in its device arena/);
      expect(thrown(() => n().cudaArgmax({ ...GOOD.cudaArgmax, x: r(0), out: r(4096), stream: 999 }))).toBeInstanceOf(KvoffDisposedError);
    } finally {
      native().cudaArenaFree({ handle: a.handle });
    }
  });

  it('survives junk in every field of every entry (typed errors only, no crash)', () => {
    const junk: unknown[] = [undefined, null, 42, 'x', [], {}, new Float32Array(2), { m: NaN }, { stream: Infinity }, { x: null, w: [] }];
    for (const name of ENTRIES) {
      for (const j of junk) expect(thrown(() => n()[name](j as Record<string, unknown>)), `${name}(${String(j)})`).toBeInstanceOf(KvoffError);
      for (const field of Object.keys(GOOD[name]))
        for (const j of [undefined, null, -1, 1.5, 'x', {}, [], NaN, 2 ** 53])
          expect(thrown(() => n()[name]({ ...GOOD[name], [field]: j })), `${name}.${field} = ${String(j)}`).toBeInstanceOf(KvoffError);
    }
  });
});

describe('fillRandomRef', () => {
  it('mix32 is Wellons lowbias32', () => {
    // Known values of lowbias32 (x ^= x >> 16; x *= 0x7feb352d; x ^= x >> 15; x *= 0x846ca68b; x ^= x >> 16).
    expect(mix32(0)).toBe(0);
    const slow = (x: number) => {
      let v = BigInt(x);
      const M = (1n << 32n) - 1n;
      v ^= v >> 16n; v = (v * 0x7feb352dn) & M; v ^= v >> 15n; v = (v * 0x846ca68bn) & M; v ^= v >> 16n;
      return Number(v);
    };
    for (const x of [1, 2, 0x9e3779b9, 0xffffffff, 123456789]) expect(mix32(x)).toBe(slow(x));
  });

  it('is uniform in [-scale, scale), deterministic, and windows agree with the whole', () => {
    const all = fillRandomRef(100_000, 'f32', 42, 0.5) as Float32Array;
    let sum = 0, lo = Infinity, hi = -Infinity;
    for (const v of all) {
      sum += v;
      lo = Math.min(lo, v);
      hi = Math.max(hi, v);
    }
    expect(lo).toBeGreaterThanOrEqual(-0.5);
    expect(hi).toBeLessThan(0.5);
    expect(Math.abs(sum / all.length)).toBeLessThan(0.01); // sd of the mean: 0.29 / sqrt(1e5) ~ 0.001
    expect(Array.from(fillRandomRef(10, 'f32', 42, 0.5, 500) as Float32Array)).toEqual(Array.from(all.subarray(500, 510)));
    expect(fillRandomRef(8, 'f32', 43, 0.5)).not.toEqual(all.subarray(0, 8));
    // Past 2^32 the high word of the index enters the hash: no repeat of the first elements.
    expect(fillRandomRef(8, 'f32', 42, 0.5, 2 ** 32)).not.toEqual(all.subarray(0, 8));
  });
});
