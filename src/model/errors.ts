// Typed errors for model files (config.json, safetensors, index, tokenizer): each names the file it is about.
import { KvoffError } from '../errors.js';

/**
 * A model file exists but its contents are wrong: bad JSON, a corrupt safetensors header, an
 * unsupported architecture or dtype, a missing or misshapen tensor. `path` is the file at fault.
 * Message: "Expected X for <path> <field> but received Z".
 */
export class KvoffModelFormatError extends KvoffError {
  readonly path: string;
  readonly field: string;
  readonly expected: string;
  readonly received: string;
  constructor(path: string, field: string, expected: string, received: string, options?: { cause?: unknown }) {
    const where = field ? `${path} ${field}` : path;
    super('KVOFF_E_MODEL_FORMAT', `Expected ${expected} for ${where} but received ${received}`, options);
    this.path = path;
    this.field = field;
    this.expected = expected;
    this.received = received;
  }
}

/** A model directory or one of its required files does not exist (or is not readable). */
export class KvoffModelNotFoundError extends KvoffError {
  readonly path: string;
  constructor(path: string, expected: string, received: string, options?: { cause?: unknown }) {
    super('KVOFF_E_MODEL_NOT_FOUND', `Expected ${expected} at ${path} but received ${received}`, options);
    this.path = path;
  }
}
