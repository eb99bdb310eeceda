// Typed errors that carry their numbers; one message template: "Expected X for Y but received Z".

/** Base class of every error kvoff throws on purpose. `code` is stable; match on it or on the class. */
export class KvoffError extends Error {
  readonly code: string;
  constructor(code: string, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = new.target.name;
    this.code = code;
  }
}

/** A caller passed something of the wrong type, shape or length. */
export class KvoffArgumentError extends KvoffError {
  readonly field: string;
  readonly expected: string;
  readonly received: string;
  constructor(field: string, expected: string, received: unknown) {
    const got = describe(received);
    super('KVOFF_E_ARG', `Expected ${expected} for ${field} but received ${got}`);
    this.field = field;
    this.expected = expected;
    this.received = got;
  }
}

/** An index (block id, slot, token id, position) lies outside what exists. */
export class KvoffRangeError extends KvoffError {
  readonly field: string;
  readonly value: number;
  readonly min: number;
  readonly max: number;
  constructor(field: string, value: number, min: number, max: number) {
    super('KVOFF_E_RANGE', `Expected ${field} in [${min}, ${max}] but received ${value}`);
    this.field = field;
    this.value = value;
    this.min = min;
    this.max = max;
  }
}

/** A resource (arena, pool, engine, worker pool) was used after dispose(). */
export class KvoffDisposedError extends KvoffError {
  readonly resource: string;
  constructor(resource: string) {
    super('KVOFF_E_DISPOSED', `Expected a live ${resource} but received one that was already disposed`);
    this.resource = resource;
  }
}

/** A pool or arena cannot hold what was asked: carries needed and available amounts. */
export class KvoffCapacityError extends KvoffError {
  readonly needed: number;
  readonly available: number;
  constructor(what: string, needed: number, available: number, hint = '') {
    super('KVOFF_E_CAPACITY', `Expected room for ${needed} ${what} but only ${available} are available${hint ? `; ${hint}` : ''}`);
    this.needed = needed;
    this.available = available;
  }
}

/** The native addon failed to load, or failed inside a kernel in a way JS cannot fix. */
export class KvoffNativeError extends KvoffError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('KVOFF_E_NATIVE', message, options);
  }
}

/** A GPU operation cannot run: no usable GPU, CUDA not built, or a CUDA call failed; the message says which and why. */
export class KvoffDeviceError extends KvoffError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('KVOFF_E_DEVICE', message, options);
  }
}

/** Short, safe rendering of a received value for error messages. */
export function describe(value: unknown): string {
  if (value === null) return 'null';
  if (value === undefined) return 'undefined';
  if (typeof value === 'string') return JSON.stringify(value.length > 60 ? `${value.slice(0, 57)}...` : value);
  if (typeof value === 'number' || typeof value === 'boolean' || typeof value === 'bigint') return String(value);
  if (ArrayBuffer.isView(value)) {
    const n = (value as { length?: number }).length ?? value.byteLength;
    return `${value.constructor.name}(${n})`;
  }
  if (Array.isArray(value)) return `array(${value.length})`;
  if (typeof value === 'function') return 'a function';
  return `an object with keys [${Object.keys(value as object).slice(0, 6).join(', ')}]`;
}

/**
 * Turns an Error thrown by the native addon (which carries `code` and a message in the common
 * template) into the matching typed class, keeping the native message verbatim.
 */
export function fromNativeError(err: unknown): unknown {
  if (!(err instanceof Error) || err instanceof KvoffError) return err;
  const code = (err as { code?: unknown }).code;
  const msg = err.message;
  let out: KvoffError;
  if (code === 'KVOFF_E_ARG') {
    const m = /^Expected (.*) for (\S+) but received (.*)$/s.exec(msg);
    out = new KvoffArgumentError(m?.[2] ?? '?', m?.[1] ?? '?', m?.[3] ?? '?');
    Object.assign(out, { received: m?.[3] ?? '?' });
  } else if (code === 'KVOFF_E_RANGE') {
    const m = /^Expected (\S+) in \[(-?\d+), (-?\d+)\] but received (-?\d+)$/.exec(msg);
    out = m
      ? new KvoffRangeError(m[1]!, Number(m[4]), Number(m[2]), Number(m[3]))
      : new KvoffRangeError('?', NaN, NaN, NaN);
  } else if (code === 'KVOFF_E_DISPOSED') {
    out = new KvoffDisposedError('arena');
  } else if (code === 'KVOFF_E_CAPACITY') {
    // Native messages in KvoffCapacityError's own template keep their numbers.
    const m = /^Expected room for (\d+) (.+?) but only (\d+) are available/.exec(msg);
    out = m ? new KvoffCapacityError(m[2]!, Number(m[1]), Number(m[3])) : new KvoffCapacityError('bytes', NaN, NaN);
  } else if (code === 'KVOFF_E_DEVICE') {
    out = new KvoffDeviceError(msg);
  } else {
    return err;
  }
  out.message = msg;
  return out;
}
