// safetensors: round trips for every dtype, one clear typed error per corruption, and a fuzz property.
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import fc from 'fast-check';
import { afterAll, describe, expect, it } from 'vitest';
import { f32ToBf16, f32ToF16, roundThrough } from '../src/kernels/half.js';
import { KvoffModelFormatError, KvoffModelNotFoundError } from '../src/model/errors.js';
import { parseSafetensors, parseSafetensorsWithMetadata, readSafetensorsFile, writeSafetensors } from '../src/model/safetensors.js';
import { tensorElements, toFloat32 } from '../src/model/tensor.js';
import type { RawTensor, TensorDtype } from '../src/model/types.js';
import { randn, rng } from './helpers.js';

const PATH = '/models/x/model.safetensors';

function encode(values: Float32Array, dtype: TensorDtype): Uint8Array {
  if (dtype === 'f32') return new Uint8Array(values.slice().buffer);
  const h = new Uint16Array(values.length);
  for (let i = 0; i < values.length; i++) h[i] = dtype === 'f16' ? f32ToF16(values[i]) : f32ToBf16(values[i]);
  return new Uint8Array(h.buffer);
}

function tensor(shape: number[], dtype: TensorDtype, seed: number): { t: RawTensor; values: Float32Array } {
  const values = randn(tensorElements(shape), rng(seed));
  return { t: { dtype, shape, data: encode(values, dtype) }, values };
}

/** A file from a header given as an object (serialized) or raw text, with an explicit data section. */
function rawFile(header: unknown, data: Uint8Array = new Uint8Array(0), headerLen?: bigint): Uint8Array {
  const h = new TextEncoder().encode(typeof header === 'string' ? header : JSON.stringify(header));
  const out = new Uint8Array(8 + h.length + data.length);
  new DataView(out.buffer).setBigUint64(0, headerLen ?? BigInt(h.length), true);
  out.set(h, 8);
  out.set(data, 8 + h.length);
  return out;
}

function formatError(fn: () => unknown): KvoffModelFormatError {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(KvoffModelFormatError);
    const e = err as KvoffModelFormatError;
    expect(e.code).toBe('KVOFF_E_MODEL_FORMAT');
    expect(e.path).toBe(PATH);
    expect(e.message).toMatch(/^Expected .+ for .+ but received .+$/s);
    expect(e.message).toContain(PATH);
    return e;
  }
  throw new Error('expected a KvoffModelFormatError, but nothing was thrown');
}

describe('safetensors round trip', () => {
  it.each(['f32', 'f16', 'bf16'] as const)('writes and parses %s tensors, zero-copy', (dtype) => {
    const a = tensor([3, 5], dtype, 1);
    const b = tensor([7], dtype, 2);
    const scalar = tensor([], dtype, 3);
    const empty = tensor([0, 4], dtype, 4);
    const input = new Map([['layer.a', a.t], ['b', b.t], ['scalar', scalar.t], ['empty', empty.t]]);
    const bytes = writeSafetensors(input, { format: 'pt' });

    const n = Number(new DataView(bytes.buffer).getBigUint64(0, true));
    expect(n % 8).toBe(0); // padded like the HF writer
    const { tensors, metadata } = parseSafetensorsWithMetadata(bytes, PATH);
    expect(metadata).toEqual({ format: 'pt' });
    expect([...tensors.keys()].sort()).toEqual(['b', 'empty', 'layer.a', 'scalar']);
    for (const [name, src] of [['layer.a', a], ['b', b], ['scalar', scalar]] as const) {
      const got = tensors.get(name)!;
      expect(got.dtype).toBe(dtype);
      expect(got.shape).toEqual(src.t.shape);
      expect(got.data.buffer).toBe(bytes.buffer); // a view, not a copy
      expect(Buffer.from(got.data).equals(Buffer.from(src.t.data))).toBe(true);
      const want = dtype === 'f32' ? src.values : roundThrough(src.values, dtype);
      expect(Array.from(toFloat32(got))).toEqual(Array.from(want));
    }
    expect(tensors.get('empty')!.data.length).toBe(0);
  });

  it('aligns every tensor to its element size when dtypes are mixed', () => {
    const input = new Map([
      ['h', tensor([3], 'f16', 1).t],
      ['f', tensor([5], 'f32', 2).t],
      ['g', tensor([1], 'bf16', 3).t],
    ]);
    const tensors = parseSafetensors(writeSafetensors(input), PATH);
    for (const t of tensors.values()) expect(t.data.byteOffset % (t.dtype === 'f32' ? 4 : 2)).toBe(0);
  });

  it('converts misaligned half tensors too', () => {
    const { t, values } = tensor([9], 'bf16', 5);
    const shifted = new Uint8Array(t.data.length + 1).subarray(1);
    shifted.set(t.data);
    expect(Array.from(toFloat32({ ...t, data: shifted }))).toEqual(Array.from(roundThrough(values, 'bf16')));
  });

  describe('from a file', () => {
    let dir = '';
    afterAll(async () => {
      if (dir) await rm(dir, { recursive: true, force: true });
    });
    it('reads what writeSafetensors wrote, and names a missing file', async () => {
      dir = await mkdtemp(join(tmpdir(), 'kvoff-st-'));
      const a = tensor([4, 4], 'bf16', 9);
      const path = join(dir, 'm.safetensors');
      await writeFile(path, writeSafetensors(new Map([['a', a.t]])));
      const got = (await readSafetensorsFile(path)).get('a')!;
      expect(got.shape).toEqual([4, 4]);
      expect(Buffer.from(got.data).equals(Buffer.from(a.t.data))).toBe(true);

      const missing = join(dir, 'nope.safetensors');
      await expect(readSafetensorsFile(missing)).rejects.toThrow(KvoffModelNotFoundError);
      await expect(readSafetensorsFile(missing)).rejects.toThrow(missing);
    });

    it('reads the same tensors whatever the span size (big tensors get their own span)', async () => {
      const input = new Map([
        ['big', tensor([40], 'f32', 1).t],
        ['s1', tensor([3], 'f16', 2).t],
        ['s2', tensor([5], 'bf16', 3).t],
        ['empty', tensor([0], 'f32', 4).t],
        ['s3', tensor([2], 'f32', 5).t],
      ]);
      const path = join(dir, 'spans.safetensors');
      await writeFile(path, writeSafetensors(input));
      for (const spanBytes of [1, 8, 16, 64, 1 << 20]) {
        const got = await readSafetensorsFile(path, { spanBytes });
        expect([...got.keys()].sort()).toEqual([...input.keys()].sort());
        for (const [name, t] of input) expect(Buffer.from(got.get(name)!.data).equals(Buffer.from(t.data))).toBe(true);
      }
    });

    it('validates a file header against the real file size', async () => {
      const path = join(dir, 'bad.safetensors');
      await writeFile(path, rawFile({ a: { dtype: 'F32', shape: [4], data_offsets: [0, 16] } }, new Uint8Array(8)));
      await expect(readSafetensorsFile(path)).rejects.toThrow(KvoffModelFormatError);
      await expect(readSafetensorsFile(path)).rejects.toThrow(/8-byte data section for .*bad\.safetensors tensor "a" data_offsets/);
      await writeFile(path, new Uint8Array(3));
      await expect(readSafetensorsFile(path)).rejects.toThrow(/at least 8 bytes.*received 3 bytes/);
    });
  });
});

describe('safetensors corruption gives KvoffModelFormatError', () => {
  const ok = { dtype: 'F32', shape: [2], data_offsets: [0, 8] };
  const data8 = new Uint8Array(8);

  it('file shorter than 8 bytes', () => {
    const e = formatError(() => parseSafetensors(new Uint8Array(5), PATH));
    expect(e.message).toContain('at least 8 bytes');
    expect(e.message).toContain('received 5 bytes');
  });

  it('header length past the end of the file', () => {
    const e = formatError(() => parseSafetensors(rawFile({}, new Uint8Array(0), 1000n), PATH));
    expect(e.field).toBe('header length');
    expect(e.message).toContain('received 1000 bytes');
  });

  it('absurdly large header length', () => {
    const e = formatError(() => parseSafetensors(rawFile({}, new Uint8Array(0), 2n ** 63n + 5n), PATH));
    expect(e.message).toContain('at most 100000000 bytes');
    expect(e.message).toContain(String(2n ** 63n + 5n));
  });

  it('header that is not UTF-8, not JSON, or not an object', () => {
    const bad = rawFile('{}');
    bad[8] = 0xff;
    expect(formatError(() => parseSafetensors(bad, PATH)).message).toContain('UTF-8');
    expect(formatError(() => parseSafetensors(rawFile('{"a":'), PATH)).message).toContain('invalid JSON');
    expect(formatError(() => parseSafetensors(rawFile(''), PATH)).message).toContain('invalid JSON');
    expect(formatError(() => parseSafetensors(rawFile('[1,2]'), PATH)).message).toContain('Expected a JSON object');
    expect(formatError(() => parseSafetensors(rawFile('null'), PATH)).message).toContain('received null');
  });

  it('tensor entry that is not an object or lacks fields', () => {
    expect(formatError(() => parseSafetensors(rawFile({ w: 5 }), PATH)).message).toContain('tensor "w"');
    const noOffsets = formatError(() => parseSafetensors(rawFile({ w: { dtype: 'F32', shape: [2] } }, data8), PATH));
    expect(noOffsets.field).toBe('tensor "w" data_offsets');
    expect(noOffsets.message).toContain('received undefined');
    const noShape = formatError(() => parseSafetensors(rawFile({ w: { dtype: 'F32', data_offsets: [0, 8] } }, data8), PATH));
    expect(noShape.field).toBe('tensor "w" shape');
    const numDtype = formatError(() => parseSafetensors(rawFile({ w: { ...ok, dtype: 3 } }, data8), PATH));
    expect(numDtype.field).toBe('tensor "w" dtype');
  });

  it('unsupported dtype names the tensor, the dtype and the supported list', () => {
    const e = formatError(() => parseSafetensors(rawFile({ 'model.x': { dtype: 'I8', shape: [8], data_offsets: [0, 8] } }, data8), PATH));
    expect(e.message).toBe(`Expected one of F32, F16, BF16 for ${PATH} tensor "model.x" dtype but received "I8"`);
  });

  it.each([[[-1]], [[1.5]], [['2']], ['2'], [[2, null]]])('shape %j', (shape) => {
    const e = formatError(() => parseSafetensors(rawFile({ w: { ...ok, shape } }, data8), PATH));
    expect(e.field).toBe('tensor "w" shape');
    expect(e.message).toContain('non-negative integers');
  });

  it.each([[[0]], [[0, '8']], [[-1, 7]], [[0.5, 8]], [[0, 8, 8]], [{ begin: 0 }]])('data_offsets %j', (offsets) => {
    const e = formatError(() => parseSafetensors(rawFile({ w: { ...ok, data_offsets: offsets } }, data8), PATH));
    expect(e.field).toBe('tensor "w" data_offsets');
  });

  it('data_offsets with begin > end', () => {
    const e = formatError(() => parseSafetensors(rawFile({ w: { dtype: 'F32', shape: [0], data_offsets: [8, 4] } }, data8), PATH));
    expect(e.message).toContain('begin <= end');
    expect(e.message).toContain('[8,4]');
  });

  it('byte length that does not match shape and dtype', () => {
    const e = formatError(() => parseSafetensors(rawFile({ w: { dtype: 'BF16', shape: [3, 2], data_offsets: [0, 8] } }, data8), PATH));
    expect(e.message).toContain('12 bytes (shape [3,2] of BF16)');
    expect(e.message).toContain('received 8 bytes');
  });

  it('offsets past the end of the data section', () => {
    const e = formatError(() => parseSafetensors(rawFile({ w: { dtype: 'F32', shape: [4], data_offsets: [0, 16] } }, data8), PATH));
    expect(e.message).toContain('within the 8-byte data section');
  });

  it('overlapping tensors, in any header order', () => {
    const header = {
      b: { dtype: 'F32', shape: [2], data_offsets: [4, 12] },
      a: { dtype: 'F32', shape: [2], data_offsets: [0, 8] },
    };
    const e = formatError(() => parseSafetensors(rawFile(header, new Uint8Array(12)), PATH));
    expect(e.message).toContain('tensor "b" data_offsets');
    expect(e.message).toContain('not overlapping tensor "a"');
  });

  it('allows gaps, trailing bytes and empty tensors anywhere', () => {
    const header = {
      a: { dtype: 'F32', shape: [1], data_offsets: [0, 4] },
      e: { dtype: 'F16', shape: [0], data_offsets: [10, 10] },
      b: { dtype: 'F16', shape: [2], data_offsets: [8, 12] },
    };
    const t = parseSafetensors(rawFile(header, new Uint8Array(20)), PATH);
    expect([...t.keys()].sort()).toEqual(['a', 'b', 'e']);
  });

  it('__metadata__ must map strings to strings', () => {
    const e = formatError(() => parseSafetensors(rawFile({ __metadata__: { step: 3 } }), PATH));
    expect(e.field).toBe('__metadata__');
  });
});

// ---- property: arbitrary corruption never escapes as anything but KvoffModelFormatError ----

type Mutation =
  | { kind: 'headerLen'; len: bigint }
  | { kind: 'truncate'; frac: number }
  | { kind: 'flip'; pos: number; byte: number }
  | { kind: 'field'; pick: number; key: 'dtype' | 'shape' | 'data_offsets'; value: unknown }
  | { kind: 'delete'; pick: number; key: 'dtype' | 'shape' | 'data_offsets' }
  | { kind: 'replace'; pick: number; value: unknown }
  | { kind: 'swap'; pick: number }
  | { kind: 'shift'; pick: number; delta: number }
  | { kind: 'copyOffsets'; pick: number; from: number }
  | { kind: 'add'; name: string; value: unknown };

const num = fc.oneof(fc.integer({ min: -5, max: 40 }), fc.double(), fc.constant(2 ** 53), fc.constant(1e300));
const anyValue: fc.Arbitrary<unknown> = fc.oneof(fc.jsonValue(), fc.array(num, { maxLength: 4 }), num);
const mutationArb: fc.Arbitrary<Mutation> = fc.oneof(
  fc.record({ kind: fc.constant('headerLen' as const), len: fc.bigInt({ min: 0n, max: 2n ** 64n - 1n }) }),
  fc.record({ kind: fc.constant('truncate' as const), frac: fc.double({ min: 0, max: 1, noNaN: true }) }),
  fc.record({ kind: fc.constant('flip' as const), pos: fc.nat(), byte: fc.integer({ min: 0, max: 255 }) }),
  fc.record({
    kind: fc.constant('field' as const),
    pick: fc.nat(),
    key: fc.constantFrom('dtype' as const, 'shape' as const, 'data_offsets' as const),
    value: fc.oneof(anyValue, fc.constantFrom('F32', 'F16', 'BF16', 'I8', 'F64', 'bf16', '')),
  }),
  fc.record({ kind: fc.constant('delete' as const), pick: fc.nat(), key: fc.constantFrom('dtype' as const, 'shape' as const, 'data_offsets' as const) }),
  fc.record({ kind: fc.constant('replace' as const), pick: fc.nat(), value: anyValue }),
  fc.record({ kind: fc.constant('swap' as const), pick: fc.nat() }),
  fc.record({ kind: fc.constant('shift' as const), pick: fc.nat(), delta: fc.integer({ min: -16, max: 16 }) }),
  fc.record({ kind: fc.constant('copyOffsets' as const), pick: fc.nat(), from: fc.nat() }),
  fc.record({ kind: fc.constant('add' as const), name: fc.oneof(fc.string(), fc.constant('__metadata__'), fc.constant('__proto__')), value: anyValue }),
);

const specArb = fc.array(
  fc.record({
    shape: fc.array(fc.integer({ min: 0, max: 4 }), { maxLength: 3 }),
    dtype: fc.constantFrom('f32' as const, 'f16' as const, 'bf16' as const),
  }),
  { minLength: 1, maxLength: 4 },
);

function corrupt(valid: Uint8Array, muts: Mutation[]): Uint8Array {
  const n = Number(new DataView(valid.buffer, valid.byteOffset).getBigUint64(0, true));
  const header = JSON.parse(new TextDecoder().decode(valid.subarray(8, 8 + n))) as Record<string, Record<string, unknown>>;
  const data = valid.subarray(8 + n);
  let headerLen: bigint | undefined;
  let truncate: number | undefined;
  const flips: Array<[number, number]> = [];
  const names = () => Object.keys(header);
  const entry = (pick: number) => {
    const k = names();
    return k.length ? header[k[pick % k.length]] : undefined;
  };
  for (const m of muts) {
    const e = 'pick' in m ? entry(m.pick) : undefined;
    const isObj = typeof e === 'object' && e !== null;
    if (m.kind === 'headerLen') headerLen = m.len;
    else if (m.kind === 'truncate') truncate = m.frac;
    else if (m.kind === 'flip') flips.push([m.pos, m.byte]);
    else if (m.kind === 'field' && isObj) e[m.key] = m.value;
    else if (m.kind === 'delete' && isObj) delete e[m.key];
    else if (m.kind === 'replace' && names().length) header[names()[m.pick % names().length]] = m.value as Record<string, unknown>;
    else if (m.kind === 'swap' && isObj && Array.isArray(e.data_offsets)) e.data_offsets = [...e.data_offsets].reverse();
    else if (m.kind === 'shift' && isObj && Array.isArray(e.data_offsets)) e.data_offsets = e.data_offsets.map((x) => (typeof x === 'number' ? x + m.delta : x));
    else if (m.kind === 'copyOffsets' && isObj) {
      const src = entry(m.from);
      if (typeof src === 'object' && src !== null) e.data_offsets = src.data_offsets;
    } else if (m.kind === 'add') Object.defineProperty(header, m.name, { value: m.value, enumerable: true, writable: true, configurable: true });
  }
  let out = rawFile(header, data, headerLen);
  for (const [pos, byte] of flips) if (out.length) out[pos % out.length] = byte;
  if (truncate !== undefined) out = out.subarray(0, Math.floor(out.length * truncate));
  return out;
}

/** What a successful parse must guarantee: in bounds, sized by shape and dtype, no aliasing. */
function checkValid(bytes: Uint8Array, tensors: Map<string, RawTensor>): void {
  const n = Number(new DataView(bytes.buffer, bytes.byteOffset).getBigUint64(0, true));
  const dataStart = bytes.byteOffset + 8 + n;
  const dataEnd = bytes.byteOffset + bytes.length;
  const ranges: Array<[number, number]> = [];
  for (const t of tensors.values()) {
    expect(t.data.buffer).toBe(bytes.buffer);
    const begin = t.data.byteOffset;
    const end = begin + t.data.length;
    expect(begin).toBeGreaterThanOrEqual(dataStart);
    expect(end).toBeLessThanOrEqual(dataEnd);
    expect(t.data.length).toBe(tensorElements(t.shape) * (t.dtype === 'f32' ? 4 : 2));
    for (const d of t.shape) expect(Number.isSafeInteger(d) && d >= 0).toBe(true);
    if (end > begin) ranges.push([begin, end]);
  }
  ranges.sort((a, b) => a[0] - b[0]);
  for (let i = 1; i < ranges.length; i++) expect(ranges[i][0]).toBeGreaterThanOrEqual(ranges[i - 1][1]);
}

describe('safetensors fuzz property', () => {
  it('either returns in-bounds, non-overlapping tensors or throws KvoffModelFormatError', () => {
    let accepted = 0;
    let refused = 0;
    fc.assert(
      fc.property(specArb, fc.array(mutationArb, { minLength: 1, maxLength: 4 }), fc.nat(), (specs, muts, seed) => {
        const input = new Map(specs.map((s, i) => [`t${i}`, tensor(s.shape, s.dtype, seed + i).t]));
        const bytes = corrupt(writeSafetensors(input), muts);
        let tensors: Map<string, RawTensor>;
        try {
          tensors = parseSafetensors(bytes, PATH);
        } catch (err) {
          if (!(err instanceof KvoffModelFormatError)) throw err;
          expect(err.code).toBe('KVOFF_E_MODEL_FORMAT');
          expect(err.message).toContain(PATH);
          refused++;
          return;
        }
        accepted++;
        checkValid(bytes, tensors);
      }),
      { numRuns: 2000, seed: 20240601 },
    );
    // Both outcomes must actually be exercised, or the property says little.
    expect(accepted).toBeGreaterThan(20);
    expect(refused).toBeGreaterThan(200);
  });
});
