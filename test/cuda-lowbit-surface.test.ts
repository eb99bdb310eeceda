// The low-bit kernels' native surface on any machine: entries exist, the native section layout equals the TS one,
// bad arguments are named (typed errors) before the GPU is looked for, and without a GPU each well-formed call
// fails with "no usable GPU" / "CUDA not built"; nothing crashes.
import { afterEach, describe, expect, it } from 'vitest';
import { HostArena } from '../src/arena.js';
import { KvoffArgumentError, KvoffCapacityError, KvoffDeviceError, KvoffDisposedError, KvoffError, KvoffRangeError } from '../src/errors.js';
import {
  cudaKiviAttendScratchBytes, deviceLowBitLayout, deviceTopKRef, kiviAttendChunks, type DeviceLowBitShape,
} from '../src/kernels/device-lowbit-layout.js';
import {
  native, type CudaKiviAttendOptions, type CudaKiviQuantizeOptions, type CudaKiviScoresOptions, type CudaLowBitShape, type CudaTopKOptions,
} from '../src/native.js';

const gpuUsable = native().buildInfo().cuda.deviceCount > 0;
const DEV = 0x40000001; // the first device arena handle a process hands out
const ref = (devOffset: number, devHandle = DEV) => ({ devHandle, devOffset });

const arenas: HostArena[] = [];
afterEach(() => {
  for (const a of arenas.splice(0)) a.dispose();
});

function thrown(f: () => unknown): unknown {
  try {
    f();
  } catch (err) {
    return err;
  }
  throw new Error('expected a throw');
}

const shape: CudaLowBitShape = { numKvHeads: 2, headDim: 64, bits: 2, keyGroupSize: 32, valueGroupSize: 32, capacityTokens: 1000 };

const quantArgs = (x: Partial<CudaKiviQuantizeOptions> = {}): CudaKiviQuantizeOptions => ({
  ...shape, kv: ref(0), dtype: 'bf16', kvCapacity: 1000, kvFirstRow: 0, first: 0, tokens: 64, lowBit: ref(1 << 20), ...x,
});
const scoreArgs = (x: Partial<CudaKiviScoresOptions> = {}): CudaKiviScoresOptions => ({
  ...shape, lowBit: ref(0), groupSize: 4, q: ref(1 << 20), numGroups: 31, out: ref(2 << 20), ldOut: 992, ...x,
});
const topkArgs = (x: Partial<CudaTopKOptions> = {}): CudaTopKOptions => ({ scores: ref(0), rows: 8, ld: 1024, first: 0, n: 1024, k: 64, out: ref(1 << 20), ...x });
const attendArgs = (x: Partial<CudaKiviAttendOptions> = {}): CudaKiviAttendOptions => ({
  ...shape, lowBit: ref(0), groupSize: 4, q: ref(1 << 20), scale: 0.125, first: 0, end: 992, out: ref(2 << 20), lse: ref(3 << 20),
  scratch: ref(4 << 20), scratchBytes: cudaKiviAttendScratchBytes({ numKvHeads: 2, groupSize: 4, headDim: 64, maxTokens: 992 }), ...x,
});

const ENTRIES = ['cudaLowBitLayout', 'cudaKiviQuantize', 'cudaKiviScores', 'cudaTopK', 'cudaKiviAttend'] as const;

describe('CUDA low-bit surface', () => {
  it('exports every entry point', () => {
    const n = native() as unknown as Record<string, unknown>;
    for (const name of ENTRIES) expect(typeof n[name], name).toBe('function');
  });

  it('derives the same section layout in native code as in TypeScript', () => {
    const shapes: DeviceLowBitShape[] = [];
    for (const headDim of [32, 64, 128, 256] as const)
      for (const bits of [1, 2, 4] as const)
        for (const keyGroupSize of [32, 64] as const)
          for (const capacityTokens of [1, 31, 32, 100, 4096, 131072 + 17])
            for (const keysOnly of [false, true])
              shapes.push({ numKvHeads: 3, headDim, bits, keyGroupSize, valueGroupSize: headDim === 32 ? 8 : 32, capacityTokens, keysOnly });
    for (const s of shapes) {
      const ts = deviceLowBitLayout(s);
      expect(native().cudaLowBitLayout(s), JSON.stringify(s)).toEqual(ts);
      for (const k of ['keyCodes', 'keyZero', 'keyScale', 'valueCodes', 'valueZero', 'valueScale', 'sectionBytes'] as const) expect(ts[k] % 256).toBe(0);
      expect(ts.layerBytes).toBe(3 * ts.sectionBytes);
    }
    // The 8B Llama's layer: 131072 tokens, 8 KV heads, head_dim 128, 2-bit, 64-token key groups, 32-channel value groups.
    const l = deviceLowBitLayout({ numKvHeads: 8, headDim: 128, bits: 2, keyGroupSize: 64, valueGroupSize: 32, capacityTokens: 131072 });
    expect(l).toEqual({
      keyCodes: 0, keyZero: 4194304, keyScale: 4718592, valueCodes: 5242880, valueZero: 9437184, valueScale: 10485760,
      sectionBytes: 11534336, layerBytes: 92274688,
    });
  });

  it('sizes the attention scratch for any range of maxTokens tokens', () => {
    expect(kiviAttendChunks(0, 0)).toBe(0);
    expect(kiviAttendChunks(0, 512)).toBe(1);
    expect(kiviAttendChunks(511, 513)).toBe(2);
    expect(kiviAttendChunks(100, 131072)).toBe(256);
    const b = cudaKiviAttendScratchBytes({ numKvHeads: 8, groupSize: 4, headDim: 128, maxTokens: 131072 });
    expect(b).toBe(8 * 257 * 4 * 130 * 4);
    for (const [first, len] of [[0, 1], [511, 2], [700, 1024], [3, 131072 - 3]]) {
      expect(kiviAttendChunks(first!, first! + len!)).toBeLessThanOrEqual(Math.ceil(len! / 512) + 1);
    }
    expect(() => cudaKiviAttendScratchBytes({ numKvHeads: 8, groupSize: 17, headDim: 128, maxTokens: 1 })).toThrow(KvoffArgumentError);
    // rows query rows per call: rows * groupSize <= 16, the scratch grows with rows.
    expect(cudaKiviAttendScratchBytes({ numKvHeads: 8, groupSize: 4, headDim: 128, maxTokens: 131072, rows: 2 })).toBe(2 * b);
    expect(cudaKiviAttendScratchBytes({ numKvHeads: 8, groupSize: 4, headDim: 128, maxTokens: 131072, rows: 1 })).toBe(b);
    expect(() => cudaKiviAttendScratchBytes({ numKvHeads: 8, groupSize: 4, headDim: 128, maxTokens: 1, rows: 5 })).toThrow(KvoffArgumentError);
    expect(() => cudaKiviAttendScratchBytes({ numKvHeads: 8, groupSize: 4, headDim: 128, maxTokens: 1, rows: 0 })).toThrow(KvoffArgumentError);
  });

  it('has a plain top-k reference with absolute positions and a mask', () => {
    const s = Float32Array.of(9, 1, 5, 5, NaN, 7, 0, -0);
    const { out, mask } = deviceTopKRef(s, 2, 4, 1, 3, 2);
    expect(Array.from(out)).toEqual([2, 3, 1, 2]); // row 0 [1, 5, 5]: the tie goes to position 2; row 1 [7, 0, -0]: 0 ties -0, position 2 first
    expect(Array.from(mask)).toEqual([0, 0, 1, 1, 0, 1, 1, 0]);
  });

  it('rejects bad shapes by field, before looking for a GPU', () => {
    const L = (x: Partial<CudaLowBitShape>) => () => native().cudaLowBitLayout({ ...shape, ...x } as CudaLowBitShape);
    expect(L({ bits: 3 as 2 })).toThrow('Expected 1, 2 or 4 for cudaLowBitLayout.bits but received 3');
    expect(thrown(L({ bits: 8 as 2 }))).toBeInstanceOf(KvoffRangeError);
    expect(L({ keyGroupSize: 48 as 32 })).toThrow('Expected 32 or 64 for cudaLowBitLayout.keyGroupSize but received 48');
    expect(L({ headDim: 96 as 64 })).toThrow('Expected 32, 64, 128 or 256 for cudaLowBitLayout.headDim but received 96');
    expect(L({ valueGroupSize: 12 })).toThrow('Expected a multiple of 8 that divides headDim 64 for cudaLowBitLayout.valueGroupSize but received 12');
    expect(L({ valueGroupSize: 48 })).toThrow(KvoffArgumentError);
    expect(L({ capacityTokens: 0 })).toThrow('Expected cudaLowBitLayout.capacityTokens in [1, 67108864] but received 0');
    expect(L({ keysOnly: 1 as unknown as boolean })).toThrow('Expected a boolean for cudaLowBitLayout.keysOnly but received 1');
    expect(L({ numKvHeads: undefined as unknown as number })).toThrow('Expected an integer for cudaLowBitLayout.numKvHeads but received undefined');
    // The TS layout applies the same rules.
    expect(() => deviceLowBitLayout({ ...shape, bits: 3 as 2 })).toThrow(KvoffArgumentError);
    expect(() => deviceLowBitLayout({ ...shape, keyGroupSize: 48 as 32 })).toThrow(KvoffArgumentError);
    expect(() => deviceLowBitLayout({ ...shape, valueGroupSize: 12 })).toThrow(KvoffArgumentError);
    expect(() => deviceLowBitLayout({ ...shape, headDim: 96 as 64 })).toThrow(KvoffArgumentError);
  });

  it('checks cudaKiviQuantize ranges', () => {
    const q = (x: Partial<CudaKiviQuantizeOptions>) => () => native().cudaKiviQuantize(quantArgs(x));
    expect(q({ first: 1001 })).toThrow('Expected cudaKiviQuantize.first in [0, 1000] but received 1001');
    expect(q({ first: 990, tokens: 11 })).toThrow('Expected cudaKiviQuantize.tokens in [0, 10] but received 11');
    expect(q({ kvCapacity: 50 })).toThrow('Expected cudaKiviQuantize.tokens in [0, 50] but received 64');
    expect(q({ kvFirstRow: 937 })).toThrow('Expected cudaKiviQuantize.kvFirstRow in [0, 936] but received 937');
    expect(q({ dtype: 'f32' as 'f16' })).toThrow('Expected "f16" or "bf16" for cudaKiviQuantize.dtype but received "f32"');
    expect(q({ kv: { devHandle: DEV } as { devHandle: number; devOffset: number } })).toThrow('Expected an integer for cudaKiviQuantize.kv.devOffset but received undefined');
    expect(q({ lowBit: undefined as unknown as { devHandle: number; devOffset: number } }))
      .toThrow('Expected a device reference {devHandle, devOffset} for cudaKiviQuantize.lowBit but received undefined');
    expect(thrown(q({ stream: -1 }))).toBeInstanceOf(KvoffRangeError);
  });

  it('checks cudaKiviScores, cudaTopK and cudaKiviAttend ranges', () => {
    expect(() => native().cudaKiviScores(scoreArgs({ numGroups: 32 }))).toThrow('Expected cudaKiviScores.numGroups in [0, 31] but received 32');
    expect(() => native().cudaKiviScores(scoreArgs({ ldOut: 991 }))).toThrow('Expected cudaKiviScores.ldOut in [992, 2147483647] but received 991');
    expect(() => native().cudaKiviScores(scoreArgs({ groupSize: 0 }))).toThrow(KvoffRangeError);

    expect(() => native().cudaTopK(topkArgs({ k: 1025 }))).toThrow('Expected cudaTopK.k in [1, 1024] but received 1025');
    expect(() => native().cudaTopK(topkArgs({ n: 2048, ld: 4096, k: 2048 + 1 }))).toThrow('Expected cudaTopK.k in [1, 2048] but received 2049');
    expect(() => native().cudaTopK(topkArgs({ ld: 1 << 22, n: (1 << 20) + 1 }))).toThrow('Expected cudaTopK.n in [1, 1048576] but received 1048577');
    expect(() => native().cudaTopK(topkArgs({ ld: 8192, n: 8192, k: 4097 }))).toThrow('Expected cudaTopK.k in [1, 4096] but received 4097');
    expect(() => native().cudaTopK(topkArgs({ first: 1, n: 1024 }))).toThrow('Expected cudaTopK.n in [1, 1023] but received 1024');
    expect(() => native().cudaTopK(topkArgs({ rows: 0 }))).toThrow('Expected cudaTopK.rows in [1, 65535] but received 0');
    expect(() => native().cudaTopK(topkArgs({ mask: 3 as unknown as { devHandle: number; devOffset: number } })))
      .toThrow('Expected a device reference {devHandle, devOffset} for cudaTopK.mask but received 3');

    expect(() => native().cudaKiviAttend(attendArgs({ end: 993 }))).toThrow('Expected cudaKiviAttend.end in [0, 992] but received 993');
    expect(() => native().cudaKiviAttend(attendArgs({ first: 10, end: 9 }))).toThrow('Expected cudaKiviAttend.end in [10, 992] but received 9');
    expect(() => native().cudaKiviAttend(attendArgs({ groupSize: 17 }))).toThrow('Expected cudaKiviAttend.groupSize in [1, 16] but received 17');
    // rows: rows * groupSize <= 16; strides of at least one row (2 heads x 4 x 64 = 512 floats).
    expect(() => native().cudaKiviAttend(attendArgs({ rows: 5 }))).toThrow('Expected cudaKiviAttend.rows in [1, 4] but received 5');
    expect(() => native().cudaKiviAttend(attendArgs({ rows: 0 }))).toThrow('Expected cudaKiviAttend.rows in [1, 4] but received 0');
    expect(() => native().cudaKiviAttend(attendArgs({ groupSize: 8, rows: 3 }))).toThrow('Expected cudaKiviAttend.rows in [1, 2] but received 3');
    expect(() => native().cudaKiviAttend(attendArgs({ rows: 1.5 }))).toThrow('Expected an integer for cudaKiviAttend.rows but received 1.5');
    expect(() => native().cudaKiviAttend(attendArgs({ qRowStride: 511 }))).toThrow('Expected cudaKiviAttend.qRowStride in [512, 2147483647] but received 511');
    expect(() => native().cudaKiviAttend(attendArgs({ outRowStride: 511 }))).toThrow('Expected cudaKiviAttend.outRowStride in [512, 2147483647] but received 511');
    expect(() => native().cudaKiviAttend(attendArgs({ outRowStride: 'x' as unknown as number }))).toThrow(/Expected an integer for cudaKiviAttend.outRowStride/);
    expect(() => native().cudaKiviAttend(attendArgs({ keysOnly: true }))).toThrow(/for cudaKiviAttend.keysOnly but received true/);
    expect(() => native().cudaKiviAttend(attendArgs({ scale: NaN }))).toThrow('Expected a finite number for cudaKiviAttend.scale but received NaN');
    expect(() => native().cudaKiviAttend(attendArgs({ exclude: ref(5 << 20), ldExclude: 991 }))).toThrow('Expected cudaKiviAttend.ldExclude in [992, 2147483647] but received 991');
    expect(() => native().cudaKiviAttend(attendArgs({ exclude: ref(5 << 20) }))).toThrow('Expected an integer for cudaKiviAttend.ldExclude but received undefined');
    // Scratch too small: a capacity error with needed and given.
    const needed = 2 * 2 * 4 * 66 * 4; // 2 heads, 2 chunks, G 4, (64 + 2) floats
    const e = thrown(() => native().cudaKiviAttend(attendArgs({ scratchBytes: needed - 1 })));
    expect(e).toBeInstanceOf(KvoffCapacityError);
    expect(e).toMatchObject({ needed, available: needed - 1 });
    expect((e as Error).message).toContain('cudaKiviAttendScratchBytes');
    // Two rows need twice the scratch; an exact fit passes the check (and fails later only for want of a GPU).
    const needed2 = 2 * needed;
    const e2 = thrown(() => native().cudaKiviAttend(attendArgs({ rows: 2, scratchBytes: needed2 - 1 })));
    expect(e2).toBeInstanceOf(KvoffCapacityError);
    expect(e2).toMatchObject({ needed: needed2, available: needed2 - 1 });
    if (!gpuUsable) expect(thrown(() => native().cudaKiviAttend(attendArgs({ rows: 2, scratchBytes: needed2 })))).toBeInstanceOf(KvoffDeviceError);
  });

  it.skipIf(gpuUsable)('without a usable GPU every well-formed call fails with the reason, naming the call', () => {
    const info = native().buildInfo().cuda;
    const why = info.built ? 'no usable GPU' : 'CUDA not built';
    const calls: [string, () => unknown][] = [
      ['cudaKiviQuantize', () => native().cudaKiviQuantize(quantArgs())],
      ['cudaKiviScores', () => native().cudaKiviScores(scoreArgs())],
      ['cudaTopK', () => native().cudaTopK(topkArgs({ mask: ref(2 << 20) }))],
      ['cudaKiviAttend', () => native().cudaKiviAttend(attendArgs({ exclude: ref(5 << 20), ldExclude: 1000 }))],
    ];
    for (const [name, call] of calls) {
      const e = thrown(call);
      expect(e, name).toBeInstanceOf(KvoffDeviceError);
      expect((e as Error).message, name).toContain(`Expected a usable CUDA GPU for ${name} but received none: ${why} (${info.reason})`);
    }
    // The layout needs no GPU.
    expect(native().cudaLowBitLayout(shape)).toEqual(deviceLowBitLayout(shape));
  });

  it('treats a host arena handle as a dead device reference (typed error, never a dereference)', () => {
    const host = new HostArena(1 << 16);
    arenas.push(host);
    const e = thrown(() => native().cudaTopK(topkArgs({ scores: ref(0, host.handle) })));
    expect(e).toBeInstanceOf(gpuUsable ? KvoffDisposedError : KvoffDeviceError);
  });

  it('survives junk in every field of every entry (typed errors only, no crash)', () => {
    const n = native() as unknown as Record<string, (...a: unknown[]) => unknown>;
    const junk: unknown[] = [undefined, null, 42, 'x', [], {}, new Float32Array(2), { bits: NaN }, { stream: Infinity }, { kv: null, lowBit: [] }];
    const good: Record<string, object> = {
      cudaLowBitLayout: shape, cudaKiviQuantize: quantArgs(), cudaKiviScores: scoreArgs(), cudaTopK: topkArgs(), cudaKiviAttend: attendArgs(),
    };
    const values: unknown[] = [undefined, null, -1, 1.5, NaN, 2 ** 53, 'x', {}, [], new Uint8Array(1)];
    for (const name of ENTRIES) {
      const calls: unknown[] = [...junk];
      // Every field of a well-formed call replaced by junk values in turn.
      for (const field of Object.keys(good[name]!)) for (const v of values) calls.push({ ...good[name], [field]: v });
      for (const j of calls) {
        let err: unknown;
        try {
          n[name](j);
        } catch (e) {
          err = e;
        }
        if (err === undefined) {
          // Only a layout query (or a GPU launch of a tolerable junk value) can succeed.
          expect(name === 'cudaLowBitLayout' || gpuUsable, `${name}(${JSON.stringify(j)})`).toBe(true);
          continue;
        }
        expect(err, `${name}(${String(j)})`).toBeInstanceOf(KvoffError);
      }
    }
  });
});
