// HostArena: a page-locked host region owned by JS and addressed by handle in native code and workers.
import { KvoffDisposedError, KvoffArgumentError } from './errors.js';
import { native, type ArenaRef } from './native.js';

let warnedPageable = false;

export class HostArena {
  readonly handle: number;
  readonly bytes: number;
  readonly pinned: boolean;
  readonly method: 'cudaHostRegister' | 'mlock' | 'pageable';
  #live = true;

  constructor(bytes: number, opts: { pin?: boolean } = {}) {
    if (!Number.isSafeInteger(bytes) || bytes < 0) throw new KvoffArgumentError('HostArena bytes', 'a non-negative integer byte count', bytes);
    const r = native().arenaCreate({ bytes, pin: opts.pin ?? true });
    this.handle = r.handle;
    this.bytes = r.bytes;
    this.pinned = r.pinned;
    this.method = r.method;
    if (r.warning && !warnedPageable) {
      warnedPageable = true;
      process.emitWarning(r.warning, { code: 'KVOFF_PAGEABLE' });
    }
  }

  get live(): boolean {
    return this.#live;
  }

  ref(offset: number): ArenaRef {
    this.#check();
    return { handle: this.handle, offset };
  }

  write(offset: number, data: ArrayBufferView): void {
    this.#check();
    native().arenaWrite({ handle: this.handle, offset, data: new Uint8Array(data.buffer, data.byteOffset, data.byteLength) });
  }

  read(offset: number, bytes: number): Uint8Array {
    this.#check();
    return native().arenaRead({ handle: this.handle, offset, bytes });
  }

  dispose(): void {
    if (!this.#live) return;
    this.#live = false;
    native().arenaFree({ handle: this.handle });
  }

  [Symbol.dispose](): void {
    this.dispose();
  }

  #check(): void {
    if (!this.#live) throw new KvoffDisposedError('HostArena');
  }
}

/** Live arenas in this process (all threads): for leak checks. */
export function arenaTotals(): { count: number; bytes: number } {
  return native().arenaTotals();
}
