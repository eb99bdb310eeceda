// A device arena carved into named buffers by a bump allocator: one cudaMalloc per owner, offsets handed out as DevRefs.
import { KvoffDisposedError } from '../errors.js';
import { native, type DevRef } from '../native.js';

/** Sub-buffers start on this boundary: 16-byte vector loads everywhere, 256 as cudaMalloc itself aligns. */
export const DEVICE_ALIGN = 256;

export const alignDevice = (bytes: number): number => Math.ceil(bytes / DEVICE_ALIGN) * DEVICE_ALIGN;

/** Plans sizes first (add), then allocates once (DeviceArena.create): the arena's size is known before any cudaMalloc. */
export class DeviceLayout {
  readonly #offsets = new Map<string, { offset: number; bytes: number }>();
  #end = 0;
  add(name: string, bytes: number): this {
    this.#offsets.set(name, { offset: this.#end, bytes });
    this.#end += alignDevice(Math.max(bytes, 1));
    return this;
  }
  get bytes(): number {
    return this.#end;
  }
  entries(): Map<string, { offset: number; bytes: number }> {
    return this.#offsets;
  }
}

export class DeviceArena {
  #live = true;
  private constructor(
    readonly handle: number,
    readonly bytes: number,
    readonly layout: Map<string, { offset: number; bytes: number }>,
  ) {}

  /** cudaMalloc of the whole layout; a KvoffCapacityError names needed and free bytes when it does not fit. */
  static create(layout: DeviceLayout): DeviceArena {
    const r = native().cudaArenaCreate({ bytes: Math.max(layout.bytes, DEVICE_ALIGN) });
    return new DeviceArena(r.handle, r.bytes, new Map(layout.entries()));
  }

  ref(name: string, byteOffset = 0): DevRef {
    if (!this.#live) throw new KvoffDisposedError('DeviceArena');
    const e = this.layout.get(name);
    if (e === undefined) throw new Error(`DeviceArena has no buffer named ${name}`);
    return { devHandle: this.handle, devOffset: e.offset + byteOffset };
  }

  bytesOf(name: string): number {
    return this.layout.get(name)?.bytes ?? 0;
  }

  get live(): boolean {
    return this.#live;
  }

  /** Frees the memory once the work already enqueued on it has finished (the native side keeps it alive until then). */
  free(): void {
    if (!this.#live) return;
    this.#live = false;
    native().cudaArenaFree({ handle: this.handle });
  }
}
