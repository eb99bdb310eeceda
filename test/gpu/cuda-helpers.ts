// Shared by the GPU tests: whether a GPU is usable, device arenas that free themselves, typed reads and writes, and
// the draws sample() accepts.
import { afterEach } from 'vitest';
import type { HostArena } from '../../src/arena.js';
import { sample, type SamplingOptions } from '../../src/engine/sampling.js';
import { native, type DevRef } from '../../src/native.js';

export const gpuUsable = native().buildInfo().cuda.deviceCount > 0;

/** A device arena owned by a test; free() is idempotent so afterEach can sweep. */
export class DevArena {
  readonly handle: number;
  readonly bytes: number;
  #live = true;
  constructor(bytes: number) {
    const r = native().cudaArenaCreate({ bytes });
    this.handle = r.handle;
    this.bytes = r.bytes;
  }
  ref(offset: number): DevRef {
    return { devHandle: this.handle, devOffset: offset };
  }
  write(offset: number, data: ArrayBufferView): void {
    native().cudaArenaWrite({ handle: this.handle, offset, data: new Uint8Array(data.buffer, data.byteOffset, data.byteLength) });
  }
  readU16(offset: number, count: number): Uint16Array {
    const b = native().cudaArenaRead({ handle: this.handle, offset, bytes: count * 2 });
    return new Uint16Array(b.buffer, b.byteOffset, count);
  }
  readF32(offset: number, count: number): Float32Array {
    const b = native().cudaArenaRead({ handle: this.handle, offset, bytes: count * 4 });
    return new Float32Array(b.buffer.slice(b.byteOffset, b.byteOffset + count * 4));
  }
  free(): void {
    if (!this.#live) return;
    this.#live = false;
    native().cudaArenaFree({ handle: this.handle });
  }
}

/**
 * The device and host arenas a test file makes, freed after each test once the default stream is done with them:
 * dev(bytes), upload(data, offset) (a device arena holding data at offset) and keep(hostArena).
 */
export function sweptArenas(): { dev: (bytes: number) => DevArena; upload: (data: ArrayBufferView, offset?: number) => DevArena; keep: <T extends HostArena>(h: T) => T } {
  const devs: DevArena[] = [];
  const hosts: HostArena[] = [];
  afterEach(async () => {
    if (gpuUsable) await native().cudaStreamSynchronize({});
    for (const d of devs.splice(0)) d.free();
    for (const h of hosts.splice(0)) h.dispose();
  });
  const dev = (bytes: number): DevArena => {
    const d = new DevArena(Math.max(bytes, 16));
    devs.push(d);
    return d;
  };
  const upload = (data: ArrayBufferView, offset = 0): DevArena => {
    const d = dev(offset + data.byteLength);
    d.write(offset, data);
    return d;
  };
  const keep = <T extends HostArena>(h: T): T => {
    hosts.push(h);
    return h;
  };
  return { dev, upload, keep };
}

/** n values uniform in [-scale, scale) from a seeded generator. */
export function uniform(n: number, r: () => number, scale = 1): Float32Array {
  const a = new Float32Array(n);
  for (let i = 0; i < n; i++) a[i] = (2 * r() - 1) * scale;
  return a;
}

/** Random bytes from a seeded generator, as 16-bit words (any bit pattern: the gather is dtype-blind). */
export function randomU16(count: number, r: () => number): Uint16Array {
  const out = new Uint16Array(count);
  for (let i = 0; i < count; i++) out[i] = Math.floor(r() * 65536);
  return out;
}

/**
 * Throws at the first differing element, naming it: vitest's deep equality walks millions of elements
 * slowly and prints unreadable diffs, and the gather results are byte-exact anyway.
 */
export function expectSameWords(got: Uint16Array, want: Uint16Array, label = ''): void {
  if (got.length !== want.length) throw new Error(`${label}: length ${got.length}, want ${want.length}`);
  if (Buffer.compare(Buffer.from(got.buffer, got.byteOffset, got.byteLength), Buffer.from(want.buffer, want.byteOffset, want.byteLength)) === 0) return;
  let i = 0;
  while (got[i] === want[i]) i++;
  const hex = (a: Uint16Array) => Array.from(a.subarray(i, i + 8), (v) => v.toString(16).padStart(4, '0')).join(' ');
  throw new Error(`${label}: first difference at word ${i} of ${want.length}: got ${hex(got)}..., want ${hex(want)}...`);
}

/** The tokens sample() picks for u and topP nudged by a relative 1e-9: a draw on the device may differ only by rounding. */
export function acceptable(logits: Float32Array, o: Required<SamplingOptions>, u: number): Set<number> {
  const eps = 1e-9;
  const picks = new Set<number>();
  for (const du of [-eps, 0, eps]) picks.add(sample(logits, o, () => Math.min(Math.max(u * (1 + du), 0), 1 - 2 ** -40)));
  if (o.topP < 1) for (const dp of [-eps, eps]) picks.add(sample(logits, { ...o, topP: Math.min(1, o.topP * (1 + dp)) }, () => u));
  return picks;
}
