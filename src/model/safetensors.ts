// Bounds-checked safetensors reader and writer: u64 LE header length, JSON header, then the data section.
import { open, type FileHandle } from 'node:fs/promises';
import { KvoffArgumentError, describe } from '../errors.js';
import type { RawTensor, TensorDtype } from './types.js';
import { KvoffModelFormatError, KvoffModelNotFoundError } from './errors.js';
import { tensorElements } from './tensor.js';

/** A header larger than this is corrupt, not big: real headers are a few hundred KB (HF caps them at 100 MB too). */
export const MAX_HEADER_BYTES = 100_000_000;

const FILE_DTYPES: Record<string, TensorDtype> = { F32: 'f32', F16: 'f16', BF16: 'bf16' };
const DTYPE_NAMES: Record<TensorDtype, string> = { f32: 'F32', f16: 'F16', bf16: 'BF16' };
export const DTYPE_BYTES: Record<TensorDtype, number> = { f32: 4, f16: 2, bf16: 2 };
const SUPPORTED_LIST = 'one of F32, F16, BF16';

/** One validated header entry; offsets are relative to the start of the data section. */
export interface SafetensorsEntry {
  name: string;
  dtype: TensorDtype;
  shape: number[];
  begin: number;
  end: number;
}

export interface SafetensorsHeader {
  entries: SafetensorsEntry[]; // sorted by begin
  metadata: Record<string, string> | null;
}

/** Short JSON rendering of a header value for messages; falls back to describe() for odd values. */
function show(v: unknown): string {
  try {
    const s = JSON.stringify(v);
    if (s === undefined) return describe(v);
    return s.length > 80 ? `${s.slice(0, 77)}...` : s;
  } catch {
    return describe(v);
  }
}

function isPlainObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function isCount(v: unknown): v is number {
  return typeof v === 'number' && Number.isSafeInteger(v) && v >= 0;
}

/** Reads the 8-byte length prefix and checks it against the file size; returns the header length N. */
function readHeaderLength(prefix: Uint8Array, fileSize: number, path: string): number {
  if (fileSize < 8) {
    throw new KvoffModelFormatError(path, 'file size', 'at least 8 bytes (the header length prefix)', `${fileSize} bytes`);
  }
  const n = new DataView(prefix.buffer, prefix.byteOffset, 8).getBigUint64(0, true);
  if (n > BigInt(MAX_HEADER_BYTES)) {
    throw new KvoffModelFormatError(path, 'header length', `at most ${MAX_HEADER_BYTES} bytes`, `${n} bytes`);
  }
  const len = Number(n);
  if (8 + len > fileSize) {
    throw new KvoffModelFormatError(path, 'header length', `at most ${fileSize - 8} bytes (the rest of the file)`, `${len} bytes`);
  }
  return len;
}

/**
 * Validates the JSON header against a data section of `dataLength` bytes. Every check that can
 * make a later view read out of bounds (or alias another tensor) happens here.
 */
export function parseSafetensorsHeader(header: Uint8Array, dataLength: number, path: string): SafetensorsHeader {
  let text: string;
  try {
    text = new TextDecoder('utf-8', { fatal: true }).decode(header);
  } catch (err) {
    throw new KvoffModelFormatError(path, 'header', 'UTF-8 text', 'invalid UTF-8 bytes', { cause: err });
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (err) {
    throw new KvoffModelFormatError(path, 'header', 'valid JSON', `invalid JSON (${(err as Error).message})`, { cause: err });
  }
  if (!isPlainObject(json)) {
    throw new KvoffModelFormatError(path, 'header', 'a JSON object', show(json));
  }

  let metadata: Record<string, string> | null = null;
  const entries: SafetensorsEntry[] = [];
  for (const [name, raw] of Object.entries(json)) {
    if (name === '__metadata__') {
      if (!isPlainObject(raw) || !Object.values(raw).every((v) => typeof v === 'string')) {
        throw new KvoffModelFormatError(path, '__metadata__', 'an object of string values', show(raw));
      }
      metadata = raw as Record<string, string>;
      continue;
    }
    entries.push(parseEntry(name, raw, dataLength, path));
  }

  // Overlap check: after sorting by begin, each non-empty tensor must start at or after the
  // furthest end seen so far. Empty tensors occupy no bytes, so they cannot alias anything.
  entries.sort((a, b) => a.begin - b.begin || a.end - b.end);
  let maxEnd = 0;
  let maxEndName = '';
  for (const e of entries) {
    if (e.end === e.begin) continue;
    if (e.begin < maxEnd) {
      throw new KvoffModelFormatError(
        path,
        `tensor ${show(e.name)} data_offsets`,
        `a range not overlapping tensor ${show(maxEndName)} (which ends at ${maxEnd})`,
        show([e.begin, e.end]),
      );
    }
    maxEnd = e.end;
    maxEndName = e.name;
  }
  return { entries, metadata };
}

function parseEntry(name: string, raw: unknown, dataLength: number, path: string): SafetensorsEntry {
  const field = (f: string) => `tensor ${show(name)} ${f}`;
  if (!isPlainObject(raw)) {
    throw new KvoffModelFormatError(path, `tensor ${show(name)}`, 'an object with dtype, shape and data_offsets', show(raw));
  }
  const { dtype: rawDtype, shape: rawShape, data_offsets: rawOffsets } = raw;
  if (typeof rawDtype !== 'string') {
    throw new KvoffModelFormatError(path, field('dtype'), `a string, ${SUPPORTED_LIST}`, show(rawDtype));
  }
  const dtype = Object.hasOwn(FILE_DTYPES, rawDtype) ? FILE_DTYPES[rawDtype] : undefined;
  if (dtype === undefined) {
    throw new KvoffModelFormatError(path, field('dtype'), SUPPORTED_LIST, show(rawDtype));
  }
  if (!Array.isArray(rawShape) || !rawShape.every(isCount)) {
    throw new KvoffModelFormatError(path, field('shape'), 'an array of non-negative integers', show(rawShape));
  }
  const shape = rawShape as number[];
  if (!Array.isArray(rawOffsets) || rawOffsets.length !== 2 || !rawOffsets.every(isCount)) {
    throw new KvoffModelFormatError(path, field('data_offsets'), 'a pair [begin, end] of non-negative integers', show(rawOffsets));
  }
  const [begin, end] = rawOffsets as [number, number];
  if (begin > end) {
    throw new KvoffModelFormatError(path, field('data_offsets'), 'begin <= end', show(rawOffsets));
  }
  if (end > dataLength) {
    throw new KvoffModelFormatError(path, field('data_offsets'), `a range within the ${dataLength}-byte data section`, show(rawOffsets));
  }
  // The product can exceed 2^53 for absurd shapes; it then cannot equal end - begin, which is what matters.
  const bytes = tensorElements(shape) * DTYPE_BYTES[dtype];
  if (bytes !== end - begin) {
    throw new KvoffModelFormatError(
      path,
      field('byte length'),
      `${bytes} bytes (shape ${show(shape)} of ${rawDtype})`,
      `${end - begin} bytes (data_offsets ${show(rawOffsets)})`,
    );
  }
  return { name, dtype, shape: shape.slice(), begin, end };
}

/** Parses a whole safetensors file held in memory. Tensor data are zero-copy views of `bytes`. */
export function parseSafetensors(bytes: Uint8Array, path: string): Map<string, RawTensor> {
  return parseSafetensorsWithMetadata(bytes, path).tensors;
}

export function parseSafetensorsWithMetadata(
  bytes: Uint8Array,
  path: string,
): { tensors: Map<string, RawTensor>; metadata: Record<string, string> | null } {
  const n = readHeaderLength(bytes, bytes.length, path);
  const dataStart = 8 + n;
  const { entries, metadata } = parseSafetensorsHeader(bytes.subarray(8, dataStart), bytes.length - dataStart, path);
  const tensors = new Map<string, RawTensor>();
  for (const e of entries) {
    tensors.set(e.name, { dtype: e.dtype, shape: e.shape, data: bytes.subarray(dataStart + e.begin, dataStart + e.end) });
  }
  return { tensors, metadata };
}

/** Largest single read; also keeps each backing buffer well under typed-array and fs limits. */
const SPAN_BYTES = 1 << 30;

/**
 * Reads a safetensors file. The header is validated against the real file size before any data
 * is read; the data are then read in spans of up to 1 GiB (fs.readFile refuses files over 2 GiB,
 * and real shards are ~5 GB). mmap would avoid the copy for huge models, but Node has no mmap in core.
 */
export async function readSafetensorsFile(path: string, options: { spanBytes?: number } = {}): Promise<Map<string, RawTensor>> {
  const spanBytes = options.spanBytes ?? SPAN_BYTES; // smaller only in tests, to exercise the grouping
  let fh;
  try {
    fh = await open(path, 'r');
  } catch (err) {
    throw new KvoffModelNotFoundError(path, 'a readable safetensors file', (err as NodeJS.ErrnoException).code ?? String(err), { cause: err });
  }
  try {
    const size = (await fh.stat()).size;
    const prefix = new Uint8Array(8);
    if (size >= 8) await readFully(fh, prefix, 0, path); // a shorter file is refused just below
    const n = readHeaderLength(prefix, size, path);
    const header = new Uint8Array(n);
    await readFully(fh, header, 8, path);
    const dataStart = 8 + n;
    const { entries } = parseSafetensorsHeader(header, size - dataStart, path);

    const tensors = new Map<string, RawTensor>();
    let i = 0;
    while (i < entries.length) {
      // Group consecutive tensors into one span; a tensor larger than a span gets its own.
      const spanBegin = entries[i].begin;
      let j = i + 1;
      let spanEnd = entries[i].end;
      while (j < entries.length && entries[j].end - spanBegin <= spanBytes) {
        spanEnd = Math.max(spanEnd, entries[j].end);
        j++;
      }
      const span = new Uint8Array(spanEnd - spanBegin);
      await readFully(fh, span, dataStart + spanBegin, path);
      for (let k = i; k < j; k++) {
        const e = entries[k];
        tensors.set(e.name, { dtype: e.dtype, shape: e.shape, data: span.subarray(e.begin - spanBegin, e.end - spanBegin) });
      }
      i = j;
    }
    return tensors;
  } finally {
    await fh.close();
  }
}

async function readFully(fh: FileHandle, dst: Uint8Array, position: number, path: string): Promise<void> {
  let done = 0;
  while (done < dst.length) {
    const want = Math.min(dst.length - done, SPAN_BYTES);
    const { bytesRead } = await fh.read(dst, done, want, position + done);
    if (bytesRead === 0) {
      // The file shrank between stat() and read(): someone is rewriting it.
      throw new KvoffModelFormatError(path, 'file size', `at least ${position + dst.length} bytes`, `end of file at byte ${position + done}`);
    }
    done += bytesRead;
  }
}

/**
 * Serializes tensors as safetensors. Tensors are laid out widest dtype first (as the HF library
 * does), and the header is padded with spaces to 8 bytes, so every tensor is aligned to its
 * element size when the buffer itself is 8-byte aligned.
 */
export function writeSafetensors(tensors: Map<string, RawTensor>, metadata?: Record<string, string>): Uint8Array {
  const list = [...tensors.entries()];
  for (const [name, t] of list) {
    const want = tensorElements(t.shape) * DTYPE_BYTES[t.dtype];
    if (t.data.length !== want) {
      throw new KvoffArgumentError(`tensor ${JSON.stringify(name)} data`, `${want} bytes for shape ${JSON.stringify(t.shape)} of ${t.dtype}`, t.data);
    }
  }
  list.sort((a, b) => DTYPE_BYTES[b[1].dtype] - DTYPE_BYTES[a[1].dtype]); // stable: ties keep map order

  const header: Record<string, unknown> = Object.create(null); // a tensor may be named "__proto__"
  if (metadata) header.__metadata__ = metadata;
  let offset = 0;
  for (const [name, t] of list) {
    header[name] = { dtype: DTYPE_NAMES[t.dtype], shape: t.shape, data_offsets: [offset, offset + t.data.length] };
    offset += t.data.length;
  }
  const json = new TextEncoder().encode(JSON.stringify(header));
  const padded = Math.ceil(json.length / 8) * 8;
  const out = new Uint8Array(8 + padded + offset);
  new DataView(out.buffer).setBigUint64(0, BigInt(padded), true);
  out.set(json, 8);
  out.fill(0x20, 8 + json.length, 8 + padded);
  let pos = 8 + padded;
  for (const [, t] of list) {
    out.set(t.data, pos);
    pos += t.data.length;
  }
  return out;
}
