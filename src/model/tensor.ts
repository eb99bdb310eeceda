// Raw tensor helpers: element counts and little-endian f32 / f16 / bf16 bytes widened to Float32Array.
import { KvoffArgumentError } from '../errors.js';
import { f16ToF32 } from '../kernels/half.js';
import type { RawTensor } from './types.js';

const BYTES = { f32: 4, f16: 2, bf16: 2 } as const;

/** Number of elements of a row-major shape; [] is a scalar (1 element), any 0 dim gives 0. */
export function tensorElements(shape: readonly number[]): number {
  let n = 1;
  for (const d of shape) n *= d;
  return n;
}

// Typed-array views use host byte order; files are little-endian. Every realistic host is LE,
// but a BE host must not silently read garbage, so it takes the DataView path.
const HOST_LE = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

let f16Table: Float32Array | null = null; // [65536]: every f16 bit pattern, widened once (256 KiB)

function f16Lut(): Float32Array {
  if (!f16Table) {
    f16Table = new Float32Array(65536);
    for (let h = 0; h < 65536; h++) f16Table[h] = f16ToF32(h);
  }
  return f16Table;
}

/** A Uint16Array over `data`, copying only when the view would be misaligned. */
function u16View(data: Uint8Array): Uint16Array {
  if (data.byteOffset % 2 === 0) return new Uint16Array(data.buffer, data.byteOffset, data.length / 2);
  return new Uint16Array(new Uint8Array(data).buffer);
}

/** Widens a stored tensor to a fresh Float32Array (never a view of the file buffer). */
export function toFloat32(t: RawTensor): Float32Array {
  const n = tensorElements(t.shape);
  const size = BYTES[t.dtype];
  if (size === undefined) throw new KvoffArgumentError('tensor dtype', 'one of f32, f16, bf16', t.dtype);
  if (t.data.length !== n * size) {
    throw new KvoffArgumentError('tensor data', `${n * size} bytes for shape ${JSON.stringify(t.shape)} of ${t.dtype}`, t.data);
  }
  const out = new Float32Array(n);
  if (!HOST_LE) return toFloat32Portable(t, out);
  if (t.dtype === 'f32') {
    new Uint8Array(out.buffer).set(t.data); // one memcpy, whatever the source alignment
  } else if (t.dtype === 'bf16') {
    const src = u16View(t.data);
    const dst = new Uint32Array(out.buffer);
    for (let i = 0; i < n; i++) dst[i] = src[i] << 16; // bf16 is the top half of an f32
  } else {
    const src = u16View(t.data);
    const lut = f16Lut();
    for (let i = 0; i < n; i++) out[i] = lut[src[i]];
  }
  return out;
}

function toFloat32Portable(t: RawTensor, out: Float32Array): Float32Array {
  const dv = new DataView(t.data.buffer, t.data.byteOffset, t.data.byteLength);
  const scratch = new DataView(new ArrayBuffer(4));
  for (let i = 0; i < out.length; i++) {
    if (t.dtype === 'f32') out[i] = dv.getFloat32(i * 4, true);
    else if (t.dtype === 'f16') out[i] = f16ToF32(dv.getUint16(i * 2, true));
    else {
      scratch.setUint32(0, dv.getUint16(i * 2, true) << 16);
      out[i] = scratch.getFloat32(0);
    }
  }
  return out;
}
