// Bad input to native entry points throws typed errors with clear messages, never crashes.
import { afterEach, describe, expect, it } from 'vitest';
import { HostArena } from '../src/arena.js';
import { KvoffArgumentError, KvoffDisposedError, KvoffRangeError } from '../src/errors.js';
import { native, type KvRegion } from '../src/native.js';

const arenas: HostArena[] = [];
afterEach(() => {
  for (const a of arenas.splice(0)) a.dispose();
});

function region(): KvRegion {
  const a = new HostArena(4 * 2 * 16 * 2 * 64 * 2);
  arenas.push(a);
  return { handle: a.handle, offset: 0, numBlocks: 4, numKvHeads: 2, headDim: 64, blockSize: 16, dtype: 'f16' };
}

function attendArgs(r: KvRegion) {
  return {
    ...r, blockIds: Int32Array.of(0, 1), numTokens: 20, kvHeads: Int32Array.of(0, 1), groupSize: 4,
    q: new Float32Array(2 * 4 * 64), scale: 0.125, out: new Float32Array(2 * 4 * 64), lse: new Float32Array(8),
  };
}

describe('native bad input', () => {
  it('rejects a missing or non-object options argument', () => {
    const n = native() as unknown as Record<string, (...a: unknown[]) => unknown>;
    expect(() => n.kvAttend()).toThrow(/Expected an options object for kvAttend\(\) but received nothing/);
    expect(() => n.topK(42)).toThrow(KvoffArgumentError);
    expect(() => n.lseMerge(new Float32Array(3))).toThrow(/received Float32Array\(3\)/);
  });

  it('rejects wrong dtypes and lengths, naming the field, what was expected and what came', () => {
    const r = region();
    expect(() => native().kvAttend({ ...attendArgs(r), q: new Float64Array(512) as unknown as Float32Array }))
      .toThrow('Expected Float32Array(512) for kvAttend.q but received Float64Array(512)');
    expect(() => native().kvAttend({ ...attendArgs(r), lse: new Float32Array(7) }))
      .toThrow('Expected Float32Array(8) for kvAttend.lse but received Float32Array(7)');
    expect(() => native().kvAppend({ ...r, slots: Int32Array.of(0, 1), k: new Float32Array(128), v: new Float32Array(256) }))
      .toThrow(KvoffArgumentError);
    expect(() => native().kvAttend({ ...attendArgs(r), dtype: 'fp8' as 'f16' }))
      .toThrow('Expected "f16" or "bf16" for kvAttend.dtype but received "fp8"');
    expect(() => native().kvAttend({ ...attendArgs(r), numTokens: 1.5 })).toThrow(/an integer for kvAttend.numTokens/);
    expect(() => native().kiviQuantizeKeys({ bits: 3 as 2, headDim: 64, groupSize: 32, numGroups: 1, src: new Float32Array(2048), codes: new Uint8Array(512), zero: new Uint16Array(64), scale: new Uint16Array(64) }))
      .toThrow('Expected 1, 2 or 4 for kiviQuantizeKeys.bits but received 3');
    expect(() => native().kiviQuantizeValues({ bits: 2, headDim: 64, groupSize: 48, numTokens: 1, src: new Float32Array(64), codes: new Uint8Array(16), zero: new Uint16Array(1), scale: new Uint16Array(1) }))
      .toThrow(/divisor of headDim 64/);
    const e = (() => { try { native().kvAttend({ ...attendArgs(r), lse: new Float32Array(7) }); } catch (err) { return err; } })();
    expect(e).toBeInstanceOf(KvoffArgumentError);
    expect(e).toMatchObject({ code: 'KVOFF_E_ARG', field: 'kvAttend.lse', expected: 'Float32Array(8)', received: 'Float32Array(7)' });
  });

  it('rejects out-of-range block ids, slots, heads, token counts and exclusions', () => {
    const r = region();
    expect(() => native().kvAttend({ ...attendArgs(r), blockIds: Int32Array.of(0, 4) }))
      .toThrow('Expected kvAttend.blockIds in [0, 3] but received 4');
    expect(() => native().kvAttend({ ...attendArgs(r), blockIds: Int32Array.of(-1, 0) })).toThrow(KvoffRangeError);
    expect(() => native().kvAttend({ ...attendArgs(r), numTokens: 33 })).toThrow('Expected kvAttend.numTokens in [0, 32] but received 33');
    expect(() => native().kvAttend({ ...attendArgs(r), kvHeads: Int32Array.of(0, 2) })).toThrow(KvoffRangeError);
    expect(() => native().kvAttend({ ...attendArgs(r), exclude: Int32Array.of(3, 2) })).toThrow(/strictly increasing/);
    expect(() => native().kvAttend({ ...attendArgs(r), exclude: Int32Array.of(20) })).toThrow(KvoffRangeError);
    expect(() => native().kvAppend({ ...r, slots: Int32Array.of(64), k: new Float32Array(128), v: new Float32Array(128) }))
      .toThrow('Expected kvAppend.slots in [0, 63] but received 64');
    expect(() => native().topK({ rows: 1, n: 3, k: 4, scores: new Float32Array(3), out: new Int32Array(4) })).toThrow(KvoffRangeError);
  });

  it('rejects a region or arena reference that runs past the end of its arena', () => {
    const r = region();
    expect(() => native().kvAttend({ ...attendArgs(r), numBlocks: 5, blockIds: Int32Array.of(0, 1) })).toThrow(/runs past the end/);
    expect(() => native().kvAttend({ ...attendArgs(r), offset: 8 })).toThrow(/runs past the end/);
    const a = new HostArena(4096);
    arenas.push(a);
    expect(() => native().topK({ rows: 1, n: 2000, k: 1, scores: a.ref(0), out: new Int32Array(1) })).toThrow(/runs past the end/);
    expect(() => native().topK({ rows: 1, n: 10, k: 1, scores: a.ref(2), out: new Int32Array(1) })).toThrow(/aligned to 4 bytes/);
  });

  it('rejects a disposed arena with a typed error, in kernels and in the arena API', () => {
    const r = region();
    const a = arenas.pop()!;
    a.dispose();
    expect(() => native().kvAttend(attendArgs(r))).toThrow(KvoffDisposedError);
    expect(() => native().kvAttend(attendArgs(r))).toThrow(/which is freed/);
    expect(() => a.read(0, 4)).toThrow(KvoffDisposedError);
    expect(() => native().arenaFree({ handle: r.handle })).toThrow(KvoffDisposedError);
    a.dispose(); // idempotent
  });

  it('rejects absurd sizes without crashing', () => {
    expect(() => new HostArena(-1)).toThrow(KvoffArgumentError);
    expect(() => native().kvAttend({ ...attendArgs(region()), numBlocks: 2 ** 30, numKvHeads: 1024, headDim: 1024 })).toThrow(/runs past the end|fits in memory/);
  });
});
