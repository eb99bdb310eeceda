// Device arenas, async copies, streams and events on a real GPU: round trips, cross-stream ordering, arenas
// kept alive while work is in flight, a non-blocking synchronize, no leaks, and an over-large arena refused with numbers.
import { afterEach, describe, expect, it } from 'vitest';
import { HostArena, arenaTotals } from '../../src/arena.js';
import { KvoffCapacityError, KvoffDeviceError, KvoffDisposedError, KvoffRangeError } from '../../src/errors.js';
import { native } from '../../src/native.js';
import { rng } from '../helpers.js';
import { DevArena, expectSameWords, gpuUsable, randomU16 } from './cuda-helpers.js';

const MiB = 1 << 20;
const devs: DevArena[] = [];
const hosts: HostArena[] = [];
const streams: number[] = [];

afterEach(async () => {
  for (const s of streams.splice(0)) native().cudaStreamDestroy({ stream: s });
  if (gpuUsable) await native().cudaStreamSynchronize({});
  for (const d of devs.splice(0)) d.free();
  for (const h of hosts.splice(0)) h.dispose();
});

function dev(bytes: number): DevArena {
  const d = new DevArena(bytes);
  devs.push(d);
  return d;
}

function host(bytes: number): HostArena {
  const h = new HostArena(bytes);
  hosts.push(h);
  return h;
}

function stream(): number {
  const s = native().cudaStreamCreate();
  streams.push(s);
  return s;
}

function thrown(f: () => unknown): unknown {
  try {
    f();
  } catch (err) {
    return err;
  }
  throw new Error('expected a throw');
}

describe.skipIf(!gpuUsable)('CUDA device memory, streams and events', () => {
  it('pins host arenas with cudaHostRegister when a GPU is usable (the gather reads them zero-copy)', () => {
    expect(host(4096).method).toBe('cudaHostRegister');
  });

  it('round-trips bytes: sync write/read, and H2D -> D2D -> D2H on one stream', async () => {
    const r = rng(1);
    const data = randomU16(MiB, r); // 2 MiB
    const d = dev(6 * MiB);
    d.write(6, data);
    expectSameWords(d.readU16(6, data.length), data);

    const h = host(4 * MiB);
    h.write(0, data);
    const s = stream();
    native().cudaCopyH2D({ hostHandle: h.handle, hostOffset: 0, devHandle: d.handle, devOffset: 0, bytes: 2 * MiB, stream: s });
    native().cudaCopyD2D({ src: d.ref(0), dst: d.ref(4 * MiB), bytes: 2 * MiB, stream: s });
    native().cudaCopyD2H({ hostHandle: h.handle, hostOffset: 2 * MiB, devHandle: d.handle, devOffset: 4 * MiB, bytes: 2 * MiB, stream: s });
    await native().cudaStreamSynchronize({ stream: s });
    expectSameWords(new Uint16Array(h.read(2 * MiB, 2 * MiB).buffer), data);
  });

  it('orders work across streams with an event', async () => {
    const r = rng(2);
    const pattern = randomU16(32 * MiB, r); // 64 MiB
    const h = host(64 * MiB);
    h.write(0, pattern);
    const zeros = host(64 * MiB);
    const a = dev(64 * MiB), b = dev(64 * MiB);
    const s1 = stream(), s2 = stream();
    // Queue work ahead of the pattern's copy so that an unordered s2 would read stale bytes.
    for (let i = 0; i < 8; i++) native().cudaCopyH2D({ hostHandle: zeros.handle, hostOffset: 0, devHandle: a.handle, devOffset: 0, bytes: 64 * MiB, stream: s1 });
    native().cudaCopyH2D({ hostHandle: h.handle, hostOffset: 0, devHandle: a.handle, devOffset: 0, bytes: 64 * MiB, stream: s1 });
    const e = native().cudaEventRecord({ stream: s1 });
    native().cudaStreamWaitEvent({ stream: s2, event: e });
    native().cudaCopyD2D({ src: a.ref(0), dst: b.ref(0), bytes: 64 * MiB, stream: s2 });
    await native().cudaStreamSynchronize({ stream: s2 });
    native().cudaEventFree({ event: e });
    expectSameWords(b.readU16(0, pattern.length), pattern);
    await native().cudaStreamSynchronize({ stream: s1 });
  }, 30_000);

  it('cudaStreamSynchronize returns at once and settles later; events time the work', async () => {
    const d = dev(1024 * MiB);
    const s = stream();
    const e0 = native().cudaEventRecord({ stream: s, timing: true });
    for (let i = 0; i < 100; i++) native().cudaCopyD2D({ src: d.ref(0), dst: d.ref(512 * MiB), bytes: 512 * MiB, stream: s }); // ~100 GB of HBM traffic
    const e1 = native().cudaEventRecord({ stream: s, timing: true });
    const plain = native().cudaEventRecord({ stream: s });
    const p = native().cudaStreamSynchronize({ stream: s });
    // Had the call blocked until the copies ended, e1 would be complete here.
    expect(() => native().cudaEventElapsedMs({ start: e0, end: e1 })).toThrow(/has not completed yet/);
    await p;
    expect(native().cudaEventElapsedMs({ start: e0, end: e1 })).toBeGreaterThan(0);
    expect(thrown(() => native().cudaEventElapsedMs({ start: e0, end: plain }))).toBeInstanceOf(KvoffDeviceError);
    for (const e of [e0, e1, plain]) native().cudaEventFree({ event: e });
    expect(thrown(() => native().cudaEventFree({ event: e0 }))).toBeInstanceOf(KvoffDisposedError);
  }, 30_000);

  it('keeps freed host and device arenas alive until a synchronize has seen their last use', async () => {
    const r = rng(3);
    const pattern = randomU16(16 * MiB, r); // 32 MiB
    const h = new HostArena(32 * MiB);
    h.write(0, pattern);
    const d = new DevArena(32 * MiB);
    const e = dev(32 * MiB);
    const s = stream();
    const before = native().cudaArenaTotals();
    const hostBefore = arenaTotals();
    native().cudaCopyH2D({ hostHandle: h.handle, hostOffset: 0, devHandle: d.handle, devOffset: 0, bytes: 32 * MiB, stream: s });
    native().cudaCopyD2D({ src: d.ref(0), dst: e.ref(0), bytes: 32 * MiB, stream: s });
    h.dispose();
    d.free();
    expect(thrown(() => native().cudaArenaFree({ handle: d.handle }))).toBeInstanceOf(KvoffDisposedError);
    expect(native().cudaArenaTotals().count).toBe(before.count); // d's memory is still allocated
    await native().cudaStreamSynchronize({ stream: s });
    expect(native().cudaArenaTotals().count).toBe(before.count - 1);
    expect(arenaTotals().count).toBe(hostBefore.count - 1);
    expectSameWords(e.readU16(0, pattern.length), pattern);
  }, 30_000);

  it('does not leak over create/free cycles of arenas, streams and events', async () => {
    const base = native().cudaArenaTotals();
    const free0 = native().cudaMemInfo().freeBytes;
    const h = host(MiB);
    for (let i = 0; i < 100; i++) {
      const d = new DevArena(64 * MiB);
      const s = native().cudaStreamCreate();
      native().cudaCopyH2D({ hostHandle: h.handle, hostOffset: 0, devHandle: d.handle, devOffset: i * 4096, bytes: MiB, stream: s });
      const e = native().cudaEventRecord({ stream: s });
      native().cudaStreamWaitEvent({ stream: 0, event: e });
      native().cudaEventFree({ event: e });
      d.free();
      await native().cudaStreamSynchronize({ stream: s });
      native().cudaStreamDestroy({ stream: s });
    }
    await native().cudaStreamSynchronize({});
    const after = native().cudaArenaTotals();
    expect({ ...after, stagingBytes: 0 }).toEqual({ ...base, stagingBytes: 0 });
    // 6.4 GB went through; the margin allows for other test files' processes starting CUDA contexts meanwhile.
    expect(native().cudaMemInfo().freeBytes).toBeGreaterThan(free0 - 1536 * MiB);
  }, 60_000);

  it('refuses an arena larger than free memory, with needed and available bytes', () => {
    const info = native().cudaMemInfo();
    expect(info.ok).toBe(true);
    const bytes = info.totalBytes + 2 ** 30;
    const count = native().cudaArenaTotals().count;
    const e = thrown(() => native().cudaArenaCreate({ bytes }));
    expect(e).toBeInstanceOf(KvoffCapacityError);
    const c = e as KvoffCapacityError;
    expect(c.needed).toBe(bytes);
    expect(c.available).toBeGreaterThan(0);
    expect(c.available).toBeLessThanOrEqual(info.totalBytes);
    expect(c.message).toMatch(new RegExp(`^Expected room for ${bytes} bytes of device memory but only \\d+ are available; GPU 0 .* has ${info.totalBytes} bytes in all`));
    expect(native().cudaArenaTotals().count).toBe(count);
  });

  it('names stale or foreign handles and out-of-range offsets', () => {
    const d = dev(MiB);
    const h = host(MiB);
    const s = stream();
    const copy = { hostHandle: h.handle, hostOffset: 0, devHandle: d.handle, devOffset: 0, bytes: 4096, stream: s };
    expect(() => native().cudaCopyH2D({ ...copy, devHandle: h.handle })).toThrow(/Expected a live device arena for cudaCopyH2D.devHandle .* host arena's handle/);
    expect(() => native().cudaCopyH2D({ ...copy, devOffset: MiB - 100 })).toThrow(`Expected cudaCopyH2D.devOffset in [0, ${MiB - 4096}] but received ${MiB - 100}`);
    expect(thrown(() => native().cudaCopyD2D({ src: d.ref(0), dst: d.ref(MiB - 10), bytes: 100 }))).toBeInstanceOf(KvoffRangeError);
    expect(() => native().cudaCopyD2D({ src: d.ref(0), dst: d.ref(50), bytes: 100 })).toThrow(/does not overlap src for cudaCopyD2D.dst/);
    expect(() => native().cudaArenaRead({ handle: d.handle, offset: 0, bytes: MiB + 1 })).toThrow(`Expected cudaArenaRead.bytes in [0, ${MiB}] but received ${MiB + 1}`);
    expect(thrown(() => native().cudaCopyH2D({ ...copy, stream: 999_999 }))).toBeInstanceOf(KvoffDisposedError);
    native().cudaStreamDestroy({ stream: streams.pop()! });
    expect(() => native().cudaStreamSynchronize({ stream: s })).toThrow(/Expected a live stream for cudaStreamSynchronize.stream/);
  });
});
