// The device tier's native surface on any machine: every entry exists, bad arguments are named before the GPU
// is looked for, and without a usable GPU each call fails with "no usable GPU" / "CUDA not built" and never crashes.
import { afterEach, describe, expect, it } from 'vitest';
import { HostArena } from '../src/arena.js';
import { KvoffArgumentError, KvoffDeviceError, KvoffDisposedError, KvoffError, KvoffRangeError } from '../src/errors.js';
import { native, type CudaKvGatherOptions, type KvRegion } from '../src/native.js';

const gpuUsable = native().buildInfo().cuda.deviceCount > 0;
const DEV = 0x40000001; // the first device arena handle a process hands out

const arenas: HostArena[] = [];
afterEach(() => {
  for (const a of arenas.splice(0)) a.dispose();
});

function hostArena(bytes: number): HostArena {
  const a = new HostArena(bytes);
  arenas.push(a);
  return a;
}

function thrown(f: () => unknown): unknown {
  try {
    f();
  } catch (err) {
    return err;
  }
  throw new Error('expected a throw');
}

/** A well-formed gather over a 4-block region of 2 heads, head_dim 64, block size 16 (48 tokens mapped). */
function gatherArgs(extra: Partial<CudaKvGatherOptions> = {}): CudaKvGatherOptions {
  const a = hostArena(4 * 2 * 16 * 2 * 64 * 2);
  const region: KvRegion = { handle: a.handle, offset: 0, numBlocks: 4, numKvHeads: 2, headDim: 64, blockSize: 16, dtype: 'bf16' };
  return {
    ...region, blockIds: Int32Array.of(2, 0, 3), kvHeads: Int32Array.of(1), n: 4, positions: Int32Array.of(20, 21, 3, 4),
    dst: { devHandle: DEV, devOffset: 0 }, ...extra,
  };
}

const gemvArgs = { rows: 4, cols: 8, w: { devHandle: DEV, devOffset: 0 }, x: { devHandle: DEV, devOffset: 64 }, y: { devHandle: DEV, devOffset: 128 } };

const ENTRIES = [
  'cudaArenaCreate', 'cudaArenaFree', 'cudaArenaWrite', 'cudaArenaRead', 'cudaArenaTotals', 'cudaCopyH2D', 'cudaCopyD2H', 'cudaCopyD2D',
  'cudaStreamCreate', 'cudaStreamDestroy', 'cudaStreamSynchronize', 'cudaEventRecord', 'cudaStreamWaitEvent', 'cudaEventElapsedMs',
  'cudaEventFree', 'cudaKvGather', 'cudaKvGatherDevice', 'cudaGemvBf16', 'cudaGraphBegin', 'cudaGraphEnd', 'cudaGraphLaunch', 'cudaGraphFree',
] as const;

const dref = (devOffset: number) => ({ devHandle: DEV, devOffset });
const gatherDeviceArgs = (handle: number) => ({
  handle, offset: 0, numBlocks: 1, numKvHeads: 1, headDim: 8, blockSize: 16, dtype: 'bf16' as const,
  blockTable: dref(0), tableLen: 1, positions: dref(64), n: 4, dst: dref(128), dstCapacity: 4, table: dref(1024),
});

describe('CUDA device-tier surface', () => {
  it('exports every entry point, typed once in src/native.ts', () => {
    const n = native() as unknown as Record<string, unknown>;
    for (const name of ENTRIES) expect(typeof n[name], name).toBe('function');
    const t = native().cudaArenaTotals();
    expect(Object.keys(t).sort()).toEqual(['bytes', 'count', 'events', 'stagingBytes', 'streams']);
  });

  it.skipIf(gpuUsable)('without a usable GPU every call fails with the reason, naming the call', () => {
    const info = native().buildInfo().cuda;
    const why = info.built ? 'no usable GPU' : 'CUDA not built';
    const host = hostArena(4096);
    const copy = { hostHandle: host.handle, hostOffset: 0, devHandle: DEV, devOffset: 0, bytes: 64 };
    const calls: [string, () => unknown][] = [
      ['cudaArenaCreate', () => native().cudaArenaCreate({ bytes: 1 << 20 })],
      ['cudaArenaFree', () => native().cudaArenaFree({ handle: DEV })],
      ['cudaArenaWrite', () => native().cudaArenaWrite({ handle: DEV, offset: 0, data: new Uint8Array(8) })],
      ['cudaArenaRead', () => native().cudaArenaRead({ handle: DEV, offset: 0, bytes: 8 })],
      ['cudaCopyH2D', () => native().cudaCopyH2D(copy)],
      ['cudaCopyD2H', () => native().cudaCopyD2H({ ...copy, stream: 0 })],
      ['cudaCopyD2D', () => native().cudaCopyD2D({ src: { devHandle: DEV, devOffset: 0 }, dst: { devHandle: DEV, devOffset: 64 }, bytes: 64 })],
      ['cudaStreamCreate', () => native().cudaStreamCreate()],
      ['cudaStreamDestroy', () => native().cudaStreamDestroy({ stream: 1 })],
      ['cudaStreamSynchronize', () => native().cudaStreamSynchronize({})],
      ['cudaEventRecord', () => native().cudaEventRecord({ timing: true })],
      ['cudaStreamWaitEvent', () => native().cudaStreamWaitEvent({ event: 1 })],
      ['cudaEventElapsedMs', () => native().cudaEventElapsedMs({ start: 1, end: 2 })],
      ['cudaEventFree', () => native().cudaEventFree({ event: 1 })],
      ['cudaKvGather', () => native().cudaKvGather(gatherArgs())],
      ['cudaGemvBf16', () => native().cudaGemvBf16(gemvArgs)],
      ['cudaKvGatherDevice', () => native().cudaKvGatherDevice(gatherDeviceArgs(host.handle))],
      ['cudaGraphBegin', () => native().cudaGraphBegin({})],
      ['cudaGraphEnd', () => native().cudaGraphEnd({ stream: 0 })],
      ['cudaGraphLaunch', () => native().cudaGraphLaunch({ graph: 1 })],
      ['cudaGraphFree', () => native().cudaGraphFree({ graph: 1 })],
    ];
    for (const [name, call] of calls) {
      const e = thrown(call);
      expect(e, name).toBeInstanceOf(KvoffDeviceError);
      expect((e as Error).message, name).toContain(`Expected a usable CUDA GPU for ${name} but received none: ${why} (${info.reason})`);
      expect((e as KvoffDeviceError).code).toBe('KVOFF_E_DEVICE');
    }
    expect(native().cudaArenaTotals()).toEqual({ count: 0, bytes: 0, streams: 0, events: 0, stagingBytes: 0 });
  });

  it('rejects bad arguments by field, before looking for a GPU', () => {
    const n = native() as unknown as Record<string, (...a: unknown[]) => unknown>;
    expect(() => n.cudaArenaCreate()).toThrow('Expected an options object for cudaArenaCreate() but received nothing');
    expect(() => native().cudaArenaCreate({ bytes: 0 })).toThrow('Expected cudaArenaCreate.bytes in [1, 70368744177664] but received 0');
    expect(() => native().cudaArenaCreate({ bytes: 1.5 })).toThrow('Expected an integer for cudaArenaCreate.bytes but received 1.5');
    expect(thrown(() => native().cudaArenaCreate({ bytes: -1 }))).toBeInstanceOf(KvoffRangeError);
    expect(() => native().cudaArenaWrite({ handle: DEV, offset: 0, data: new Float32Array(2) as unknown as Uint8Array }))
      .toThrow('Expected Uint8Array for cudaArenaWrite.data but received Float32Array(2)');
    expect(() => native().cudaArenaRead({ handle: DEV, offset: -1, bytes: 4 })).toThrow(KvoffRangeError);

    const host = hostArena(4096);
    const copy = { hostHandle: host.handle, hostOffset: 0, devHandle: DEV, devOffset: 0, bytes: 64 };
    expect(() => native().cudaCopyH2D({ ...copy, bytes: host.bytes + 1 })).toThrow(`Expected cudaCopyH2D.bytes in [0, ${host.bytes}] but received ${host.bytes + 1}`);
    expect(() => native().cudaCopyD2H({ ...copy, hostOffset: host.bytes })).toThrow(`Expected cudaCopyD2H.hostOffset in [0, ${host.bytes - 64}] but received ${host.bytes}`);
    expect(() => native().cudaCopyH2D({ ...copy, devHandle: 0 })).toThrow('Expected cudaCopyH2D.devHandle in [1, 4294967295] but received 0');
    expect(() => native().cudaCopyH2D({ ...copy, stream: -1 })).toThrow('Expected cudaCopyH2D.stream in [0, 4294967295] but received -1');
    const freed = new HostArena(4096);
    freed.dispose();
    expect(thrown(() => native().cudaCopyH2D({ ...copy, hostHandle: freed.handle }))).toBeInstanceOf(KvoffDisposedError);
    expect(() => native().cudaCopyD2D({ src: 5 as unknown as { devHandle: number; devOffset: number }, dst: { devHandle: DEV, devOffset: 0 }, bytes: 1 }))
      .toThrow('Expected a device reference {devHandle, devOffset} for cudaCopyD2D.src but received 5');

    expect(() => native().cudaStreamSynchronize({ stream: 'a' as unknown as number })).toThrow('Expected an integer for cudaStreamSynchronize.stream but received "a"');
    expect(() => native().cudaStreamDestroy({ stream: 0 })).toThrow('Expected cudaStreamDestroy.stream in [1, 4294967295] but received 0');
    expect(() => native().cudaEventRecord({ timing: 1 as unknown as boolean })).toThrow('Expected a boolean for cudaEventRecord.timing but received 1');
    expect(() => native().cudaStreamWaitEvent({ event: 0 })).toThrow('Expected cudaStreamWaitEvent.event in [1, 4294967295] but received 0');
    expect(() => native().cudaEventElapsedMs({ start: 1 } as { start: number; end: number })).toThrow('Expected an integer for cudaEventElapsedMs.end but received undefined');

    expect(() => native().cudaGemvBf16({ ...gemvArgs, rows: 0 })).toThrow('Expected cudaGemvBf16.rows in [1, 2147483647] but received 0');
    const e = thrown(() => native().cudaGemvBf16({ ...gemvArgs, y: { devHandle: DEV } as { devHandle: number; devOffset: number } }));
    expect(e).toBeInstanceOf(KvoffArgumentError);
    expect(e).toMatchObject({ field: 'cudaGemvBf16.y.devOffset', expected: 'an integer', received: 'undefined' });
    expect(() => native().cudaGemvBf16({ ...gemvArgs, x: { devHandle: DEV, devOffset: -4 } })).toThrow('Expected cudaGemvBf16.x.devOffset in [0, 9007199254740991] but received -4');
  });

  it('checks the gather like kvGather, plus its units and slots', () => {
    expect(() => native().cudaKvGather(gatherArgs({ positions: Int32Array.of(20, 21, 3, 48) }))).toThrow('Expected cudaKvGather.positions in [0, 47] but received 48');
    expect(thrown(() => native().cudaKvGather(gatherArgs({ kvHeads: Int32Array.of(2) })))).toBeInstanceOf(KvoffRangeError);
    expect(thrown(() => native().cudaKvGather(gatherArgs({ blockIds: Int32Array.of(0, 4) })))).toBeInstanceOf(KvoffRangeError);
    expect(() => native().cudaKvGather(gatherArgs({ dtype: 'fp8' as 'bf16' }))).toThrow('Expected "f16" or "bf16" for cudaKvGather.dtype but received "fp8"');
    expect(() => native().cudaKvGather(gatherArgs({ positions: new Int32Array(3) }))).toThrow('Expected Int32Array(4) for cudaKvGather.positions but received Int32Array(3)');
    expect(() => native().cudaKvGather(gatherArgs({ offset: 1 }))).toThrow(/an even byte offset .* for cudaKvGather.offset but received 1/);
    expect(() => native().cudaKvGather(gatherArgs({ numBlocks: 5 }))).toThrow(/Expected the KV region .* to fit in arena/);
    expect(() => native().cudaGraphLaunch({ graph: 0 })).toThrow('Expected cudaGraphLaunch.graph in [1, 4294967295] but received 0');
    expect(() => native().cudaGraphFree({ graph: -1 })).toThrow(KvoffRangeError);
    const gdHost = hostArena(4096);
    const gd = (o: object) => native().cudaKvGatherDevice({ ...gatherDeviceArgs(gdHost.handle), ...o });
    expect(() => gd({ dstSlot: 1 })).toThrow('Expected dstSlot + n <= dstCapacity (4) for cudaKvGatherDevice.dstSlot but received 1 + 4');
    expect(() => gd({ ldPositions: 2 })).toThrow('Expected at least n (4) for cudaKvGatherDevice.ldPositions but received 2');
    expect(() => gd({ offset: 1 })).toThrow(/an even byte offset .* for cudaKvGatherDevice.offset but received 1/);
    expect(() => gd({ numBlocks: 1 << 20 })).toThrow(/Expected the KV region .* to fit in arena/);
    expect(() => gd({ positions: undefined })).toThrow(/cudaKvGatherDevice.positions/);
    // Units of unitTokens consecutive tokens inside one block.
    expect(() => native().cudaKvGather(gatherArgs({ unitTokens: 2, n: 3, positions: Int32Array.of(0, 1, 2) })))
      .toThrow('Expected a multiple of unitTokens (2) for cudaKvGather.n but received 3');
    expect(() => native().cudaKvGather(gatherArgs({ unitTokens: 2, positions: Int32Array.of(15, 16, 3, 4) })))
      .toThrow(/Expected units of 2 consecutive positions inside one block of 16 for cudaKvGather.positions but received a unit starting at position 15/);
    expect(() => native().cudaKvGather(gatherArgs({ unitTokens: 2, positions: Int32Array.of(20, 22, 3, 4) })))
      .toThrow('Expected units of 2 consecutive positions for cudaKvGather.positions but received positions[1] = 22 after 20 at the unit\'s start');
    expect(() => native().cudaKvGather(gatherArgs({ unitTokens: 32 }))).toThrow('Expected cudaKvGather.unitTokens in [1, 16] but received 32');
    // Slots: in range, consecutive within a unit, distinct within a head.
    const slotted = { dstCapacity: 8, dstSlots: Int32Array.of(5, 1, 2, 7) };
    expect(() => native().cudaKvGather(gatherArgs({ ...slotted, dstSlots: Int32Array.of(5, 1, 2, 8) }))).toThrow('Expected cudaKvGather.dstSlots in [0, 7] but received 8');
    expect(() => native().cudaKvGather(gatherArgs({ ...slotted, dstSlots: Int32Array.of(5, 1, 5, 7) })))
      .toThrow('Expected distinct slots within each head for cudaKvGather.dstSlots but received slot 5 twice for head index 0');
    expect(() => native().cudaKvGather(gatherArgs({ ...slotted, unitTokens: 2, positions: Int32Array.of(20, 21, 3, 4), dstSlots: Int32Array.of(5, 1, 2, 3) })))
      .toThrow(/Expected units of 2 consecutive slots, like positions for cudaKvGather.dstSlots but received dstSlots\[1\] = 1 after 5/);
    expect(() => native().cudaKvGather(gatherArgs({ dst: undefined as unknown as { devHandle: number; devOffset: number } })))
      .toThrow('Expected a device reference {devHandle, devOffset} for cudaKvGather.dst but received undefined');
    expect(() => native().cudaKvGather(gatherArgs({ dst: { devHandle: DEV, devOffset: 1.5 } }))).toThrow('Expected an integer for cudaKvGather.dst.devOffset but received 1.5');
    expect(() => native().cudaKvGather(gatherArgs({ stream: 2 ** 32 }))).toThrow(KvoffRangeError);
  });

  it.skipIf(gpuUsable)('survives junk in every field of every entry (typed errors only, no crash)', () => {
    const n = native() as unknown as Record<string, (...a: unknown[]) => unknown>;
    const junk: unknown[] = [undefined, null, 42, 'x', [], {}, new Float32Array(2), { bytes: NaN }, { stream: Infinity }, { src: null, dst: [] }];
    for (const name of ENTRIES) {
      if (name === 'cudaArenaTotals') continue;
      for (const j of junk) {
        let err: unknown;
        try {
          const r = n[name](j);
          if (r instanceof Promise) r.catch(() => undefined);
        } catch (e) {
          err = e;
        }
        expect(err, `${name}(${String(j)})`).toBeInstanceOf(KvoffError);
      }
    }
  });
});
