// The CUDA attention kernels' native surface on any machine: every entry exists, bad arguments (types, lengths,
// ranges, overlaps, scratch size, host handles in device fields) throw kvoff's typed errors before the GPU is looked
// for, well-formed calls without a usable GPU fail with the reason, and nothing crashes.
import { afterEach, describe, expect, it } from 'vitest';
import { HostArena } from '../src/arena.js';
import { KvoffArgumentError, KvoffCapacityError, KvoffDeviceError, KvoffRangeError } from '../src/errors.js';
import { attendChunks, cudaAttendScratchBytes } from '../src/kernels/device-attention-ref.js';
import {
  native, type CudaAttendDecodeOptions, type CudaAttendPrefillOptions, type CudaKvStoreHostOptions, type CudaKvWriteOptions,
  type CudaLseMergeOptions, type DevRef,
} from '../src/native.js';

const gpuUsable = native().buildInfo().cuda.deviceCount > 0;
const DEV = 0x40000001; // the first device arena handle a process hands out
const at = (devOffset: number, devHandle = DEV): DevRef => ({ devHandle, devOffset });

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

// Well-formed calls over disjoint ranges of one (imaginary) device arena.
const writeArgs = (o: Partial<CudaKvWriteOptions> = {}): CudaKvWriteOptions => ({
  k: at(0), v: at(4096), tokens: 2, numKvHeads: 2, headDim: 64, dtype: 'f16', dst: at(1 << 20), capacity: 8, slot: 6, ...o,
});

function storeArgs(o: Partial<CudaKvStoreHostOptions> = {}): CudaKvStoreHostOptions {
  const host = new HostArena(4 * 2 * 16 * 2 * 64 * 2);
  arenas.push(host);
  return {
    handle: host.handle, offset: 0, numBlocks: 4, blockSize: 16, k: at(0), v: at(4096), tokens: 3, numKvHeads: 2, headDim: 64, dtype: 'bf16',
    blockIds: Int32Array.of(3, 1, 0), start: 15, ...o,
  };
}

const decodeArgs = (o: Partial<CudaAttendDecodeOptions> = {}): CudaAttendDecodeOptions => ({
  kv: at(1 << 20), capacity: 100, numKvHeads: 2, headDim: 64, dtype: 'bf16', groupSize: 4, counts: Int32Array.of(100, 0),
  q: at(0), scale: 0.125, out: at(4096), lse: at(8192), scratch: at(2 << 20), scratchBytes: 1 << 20, ...o,
});

const mergeArgs = (o: Partial<CudaLseMergeOptions> = {}): CudaLseMergeOptions => ({
  rows: 4, headDim: 8, oA: at(0), lseA: at(1024), oB: at(2048), lseB: at(3072), out: at(4096), lseOut: at(5120), ...o,
});

const prefillArgs = (o: Partial<CudaAttendPrefillOptions> = {}): CudaAttendPrefillOptions => ({
  q: at(0), T: 10, start: 5, kv: at(1 << 20), capacity: 16, numKvHeads: 2, headDim: 32, dtype: 'f16', groupSize: 4, scale: 0.2,
  out: at(1 << 16), lse: at(1 << 18), ...o,
});

const ENTRIES = ['cudaKvWrite', 'cudaKvStoreHost', 'cudaAttendDecode', 'cudaAttendScratchBytes', 'cudaLseMerge', 'cudaAttendPrefill'] as const;

describe('CUDA attention surface', () => {
  it('exports every entry point', () => {
    const n = native() as unknown as Record<string, unknown>;
    for (const name of ENTRIES) expect(typeof n[name], name).toBe('function');
  });

  it('sizes decode scratch natively, like the TypeScript mirror, for every count up to maxRows', () => {
    // 8 KV heads at 131072 rows: 256 chunks of 512 rows, [8, 256, G 4, 128 + 2] f32.
    expect(native().cudaAttendScratchBytes({ numKvHeads: 8, groupSize: 4, headDim: 128, maxRows: 131072 })).toBe(8 * 256 * 4 * 130 * 4);
    expect(attendChunks(8, 131072)).toBe(256);
    for (const H of [1, 2, 8, 32, 256])
      for (const maxRows of [0, 1, 64, 65, 1000, 4096, 70001, 131072, 1 << 20]) {
        const shape = { numKvHeads: H, groupSize: 4, headDim: 64, maxRows };
        const bytes = native().cudaAttendScratchBytes(shape);
        expect(bytes, JSON.stringify(shape)).toBe(cudaAttendScratchBytes(shape));
        // Enough for any call at or below maxRows (the chunk count is not monotone; its bound is).
        for (const n of [1, 63, 64, 65, Math.floor(maxRows / 3), maxRows - 1, maxRows].filter((x) => x >= 1 && x <= maxRows)) {
          const chunks = attendChunks(H, n);
          expect(chunks <= 1 ? 0 : H * chunks * 4 * 66 * 4, `${JSON.stringify(shape)} n ${n}`).toBeLessThanOrEqual(bytes);
        }
      }
    expect(() => native().cudaAttendScratchBytes({ numKvHeads: 257, groupSize: 4, headDim: 64, maxRows: 1 })).toThrow(KvoffRangeError);
  });

  it.skipIf(gpuUsable)('without a usable GPU every well-formed call fails with the reason, naming the call', () => {
    const info = native().buildInfo().cuda;
    const why = info.built ? 'no usable GPU' : 'CUDA not built';
    const calls: [string, () => unknown][] = [
      ['cudaKvWrite', () => native().cudaKvWrite(writeArgs())],
      ['cudaKvStoreHost', () => native().cudaKvStoreHost(storeArgs())],
      ['cudaAttendDecode', () => native().cudaAttendDecode(decodeArgs())],
      ['cudaLseMerge', () => native().cudaLseMerge(mergeArgs())],
      ['cudaLseMerge', () => native().cudaLseMerge(mergeArgs({ out: at(0), lseOut: at(3072) }))], // out = oA, lseOut = lseB
      ['cudaAttendPrefill', () => native().cudaAttendPrefill(prefillArgs({ stream: 0 }))],
    ];
    for (const [name, call] of calls) {
      const e = thrown(call);
      expect(e, name).toBeInstanceOf(KvoffDeviceError);
      expect((e as Error).message, name).toContain(`Expected a usable CUDA GPU for ${name} but received none: ${why} (${info.reason})`);
    }
  });

  it('rejects missing and mistyped fields by name', () => {
    const n = native() as unknown as Record<string, (...a: unknown[]) => unknown>;
    for (const name of ENTRIES) expect(() => n[name]!(), name).toThrow(`Expected an options object for ${name}() but received nothing`);
    expect(() => native().cudaKvWrite(writeArgs({ k: undefined as unknown as DevRef }))).toThrow('Expected a device reference {devHandle, devOffset} for cudaKvWrite.k but received undefined');
    expect(() => native().cudaKvWrite(writeArgs({ tokens: '2' as unknown as number }))).toThrow('Expected an integer for cudaKvWrite.tokens but received "2"');
    expect(() => native().cudaKvWrite(writeArgs({ dtype: 'fp8' as 'f16' }))).toThrow('Expected "f16" or "bf16" for cudaKvWrite.dtype but received "fp8"');
    expect(() => native().cudaAttendDecode(decodeArgs({ dtype: 'f32' as 'f16' }))).toThrow('Expected "f16" or "bf16" for cudaAttendDecode.dtype but received "f32"');
    expect(() => native().cudaAttendDecode(decodeArgs({ scale: NaN }))).toThrow('Expected a finite number for cudaAttendDecode.scale but received NaN');
    expect(() => native().cudaAttendDecode(decodeArgs({ counts: [100, 0] as unknown as Int32Array }))).toThrow('Expected Int32Array(2) for cudaAttendDecode.counts but received an array');
    const e = thrown(() => native().cudaAttendDecode(decodeArgs({ out: { devHandle: DEV } as DevRef })));
    expect(e).toBeInstanceOf(KvoffArgumentError);
    expect(e).toMatchObject({ field: 'cudaAttendDecode.out.devOffset', expected: 'an integer', received: 'undefined' });
    expect(() => native().cudaLseMerge(mergeArgs({ stream: -1 }))).toThrow('Expected cudaLseMerge.stream in [0, 4294967295] but received -1');
    expect(() => native().cudaAttendPrefill(prefillArgs({ qRowStride: 1.5 }))).toThrow('Expected an integer for cudaAttendPrefill.qRowStride but received 1.5');
  });

  it('refuses a host arena handle where a device reference belongs', () => {
    const host = new HostArena(4096);
    arenas.push(host);
    for (const [name, call] of [
      ['cudaAttendDecode.kv', () => native().cudaAttendDecode(decodeArgs({ kv: at(0, host.handle) }))],
      ['cudaKvWrite.dst', () => native().cudaKvWrite(writeArgs({ dst: at(0, host.handle) }))],
      ['cudaLseMerge.lseB', () => native().cudaLseMerge(mergeArgs({ lseB: at(0, host.handle) }))],
      ['cudaAttendPrefill.q', () => native().cudaAttendPrefill(prefillArgs({ q: at(0, host.handle) }))],
    ] as const) {
      const e = thrown(call);
      expect(e, name).toBeInstanceOf(KvoffArgumentError);
      expect(e, name).toMatchObject({ field: `${name}.devHandle`, received: `${host.handle}, a host arena's handle` });
    }
  });

  it('checks shapes, counts and rows against the capacity', () => {
    expect(() => native().cudaAttendDecode(decodeArgs({ counts: Int32Array.of(1, 2, 3) }))).toThrow('Expected Int32Array(2) for cudaAttendDecode.counts but received Int32Array(3)');
    expect(thrown(() => native().cudaAttendDecode(decodeArgs({ counts: Int32Array.of(101, 0) })))).toMatchObject({ field: 'cudaAttendDecode.counts', value: 101, min: 0, max: 100 });
    expect(thrown(() => native().cudaAttendDecode(decodeArgs({ counts: Int32Array.of(-1, 0) })))).toBeInstanceOf(KvoffRangeError);
    expect(() => native().cudaAttendDecode(decodeArgs({ headDim: 512 }))).toThrow('Expected cudaAttendDecode.headDim in [1, 256] but received 512');
    expect(() => native().cudaAttendDecode(decodeArgs({ numKvHeads: 300 }))).toThrow('Expected cudaAttendDecode.numKvHeads in [1, 256] but received 300');
    expect(() => native().cudaAttendDecode(decodeArgs({ groupSize: 0 }))).toThrow('Expected cudaAttendDecode.groupSize in [1, 256] but received 0');
    // slot + tokens <= capacity
    expect(thrown(() => native().cudaKvWrite(writeArgs({ slot: 7 })))).toMatchObject({ field: 'cudaKvWrite.slot', value: 7, min: 0, max: 6 });
    expect(() => native().cudaKvWrite(writeArgs({ tokens: 9, slot: 0 }))).toThrow('Expected cudaKvWrite.tokens in [0, 8] but received 9');
    expect(() => native().cudaKvWrite(writeArgs({ srcRowStride: 64 }))).toThrow('Expected cudaKvWrite.srcRowStride in [128, 4294967296] but received 64');
    // start + T <= capacity for prefill
    expect(() => native().cudaAttendPrefill(prefillArgs({ start: 7 }))).toThrow('Expected cudaAttendPrefill.start in [0, 6] but received 7');
    expect(() => native().cudaAttendPrefill(prefillArgs({ T: 17, start: 0 }))).toThrow('Expected cudaAttendPrefill.T in [0, 16] but received 17');
    expect(() => native().cudaAttendPrefill(prefillArgs({ qRowStride: 100 }))).toThrow('Expected cudaAttendPrefill.qRowStride in [256, 4294967296] but received 100');
    expect(() => native().cudaLseMerge(mergeArgs({ headDim: 0 }))).toThrow('Expected cudaLseMerge.headDim in [1, 65536] but received 0');
  });

  it('fails with needed vs given when the decode scratch is too small', () => {
    // 2 heads, longest 100 rows: 2 chunks of 64 rows -> [2, 2, 4, 64 + 2] f32.
    const need = 2 * 2 * 4 * 66 * 4;
    const e = thrown(() => native().cudaAttendDecode(decodeArgs({ scratchBytes: need - 1 })));
    expect(e).toBeInstanceOf(KvoffCapacityError);
    expect(e).toMatchObject({ needed: need, available: need - 1 });
    expect((e as Error).message).toContain('size it with cudaAttendScratchBytes');
    expect(need).toBeLessThanOrEqual(cudaAttendScratchBytes({ numKvHeads: 2, groupSize: 4, headDim: 64, maxRows: 100 }));
    // One chunk per head (<= 64 rows) needs no scratch at all: the argument checks pass and only the GPU is missing.
    if (!gpuUsable) expect(thrown(() => native().cudaAttendDecode(decodeArgs({ counts: Int32Array.of(64, 3), scratchBytes: 0 })))).toBeInstanceOf(KvoffDeviceError);
  });

  it('refuses written ranges that overlap what the launch reads', () => {
    const overlap = (f: () => unknown, field: string) => {
      const e = thrown(f);
      expect(e, field).toBeInstanceOf(KvoffArgumentError);
      expect((e as KvoffArgumentError).field, field).toBe(field);
    };
    overlap(() => native().cudaAttendDecode(decodeArgs({ out: at(512) })), 'cudaAttendDecode.out'); // q is [8, 64] f32 at 0
    overlap(() => native().cudaAttendDecode(decodeArgs({ lse: at(4096 + 100) })), 'cudaAttendDecode.lse');
    overlap(() => native().cudaAttendDecode(decodeArgs({ scratch: at((1 << 20) + 64) })), 'cudaAttendDecode.scratch');
    overlap(() => native().cudaKvWrite(writeArgs({ dst: at(100) })), 'cudaKvWrite.dst');
    overlap(() => native().cudaAttendPrefill(prefillArgs({ out: at(256) })), 'cudaAttendPrefill.out');
    overlap(() => native().cudaAttendPrefill(prefillArgs({ lse: at((1 << 20) + 8) })), 'cudaAttendPrefill.lse');
    // lseMerge: out may be oA or oB exactly, never a shifted part of them.
    overlap(() => native().cudaLseMerge(mergeArgs({ out: at(4) })), 'cudaLseMerge.out');
    overlap(() => native().cudaLseMerge(mergeArgs({ lseOut: at(1028) })), 'cudaLseMerge.lseOut');
    overlap(() => native().cudaLseMerge(mergeArgs({ out: at(1024) })), 'cudaLseMerge.out');
    expect(thrown(() => native().cudaLseMerge(mergeArgs({ out: at(2048), lseOut: at(1024) })))).not.toBeInstanceOf(KvoffArgumentError);
  });

  it('checks the host store like kvAppend: region, block table, positions', () => {
    expect(thrown(() => native().cudaKvStoreHost(storeArgs({ blockIds: Int32Array.of(3, 4, 0) })))).toMatchObject({ field: 'cudaKvStoreHost.blockIds', value: 4, min: 0, max: 3 });
    expect(() => native().cudaKvStoreHost(storeArgs({ blockIds: Int32Array.of(3, 3, 0) })))
      .toThrow('Expected distinct block ids where the tokens land for cudaKvStoreHost.blockIds but received block 3 twice in entries 0..1');
    // Only the entries written to are checked (start 15, 3 tokens: entries 0 and 1).
    expect(thrown(() => native().cudaKvStoreHost(storeArgs({ blockIds: Int32Array.of(3, 1, 99) })))).not.toBeInstanceOf(KvoffRangeError);
    expect(() => native().cudaKvStoreHost(storeArgs({ start: 46 }))).toThrow('Expected cudaKvStoreHost.start in [0, 45] but received 46');
    expect(() => native().cudaKvStoreHost(storeArgs({ tokens: 49, start: 0 }))).toThrow('Expected cudaKvStoreHost.tokens in [0, 48] but received 49');
    expect(() => native().cudaKvStoreHost(storeArgs({ numBlocks: 5 }))).toThrow(/Expected the KV region .* to fit in arena/);
    expect(() => native().cudaKvStoreHost(storeArgs({ offset: 1 }))).toThrow(/an even byte offset .* for cudaKvStoreHost.offset but received 1/);
    expect(() => native().cudaKvStoreHost(storeArgs({ blockIds: new Float32Array(3) as unknown as Int32Array }))).toThrow('Expected Int32Array for cudaKvStoreHost.blockIds but received Float32Array(3)');
    expect(thrown(() => native().cudaKvStoreHost(storeArgs({ handle: DEV })))).toMatchObject({ code: 'KVOFF_E_DISPOSED' });
  });
});
