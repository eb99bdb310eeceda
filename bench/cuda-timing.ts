// What the CUDA benches share: device arenas freed by `using`, and GPU timing of enqueued work on a gated stream.
import { performance } from 'node:perf_hooks';
import { native, type DevRef } from '../src/native.js';

/** A device arena owned by a bench. */
export class DevArena implements Disposable {
  readonly handle: number;
  constructor(readonly bytes: number) {
    this.handle = native().cudaArenaCreate({ bytes }).handle;
  }
  ref(offset: number): DevRef {
    return { devHandle: this.handle, devOffset: offset };
  }
  write(offset: number, data: ArrayBufferView): void {
    native().cudaArenaWrite({ handle: this.handle, offset, data: new Uint8Array(data.buffer, data.byteOffset, data.byteLength) });
  }
  [Symbol.dispose](): void {
    native().cudaArenaFree({ handle: this.handle });
  }
}

// ---- Timing on a gated stream ----

export class Timer {
  readonly stream = native().cudaStreamCreate();
  readonly gateStream = native().cudaStreamCreate();
  copyMs = 1; // ms of one gate copy, known once the device copy was measured
  constructor(private readonly gateArena: DevArena, private readonly gateBytes: number) {}

  /** Holds `stream` for about `ms` behind device copies on the gate stream. */
  private gate(ms: number): void {
    const copies = Math.min(2000, Math.ceil(ms / this.copyMs));
    for (let i = 0; i < copies; i++)
      native().cudaCopyD2D({ src: this.gateArena.ref(0), dst: this.gateArena.ref(this.gateBytes), bytes: this.gateBytes, stream: this.gateStream });
    const e = native().cudaEventRecord({ stream: this.gateStream });
    native().cudaStreamWaitEvent({ stream: this.stream, event: e });
    native().cudaEventFree({ event: e });
  }

  /**
   * GPU milliseconds of each of `reps` calls of enqueue(i) (after `warmup` untimed ones), from events recorded
   * between them. The CPU cost of one call, measured during warm-up, sizes the gate.
   */
  async time(reps: number, warmup: number, enqueue: (i: number) => void): Promise<number[]> {
    let cpuMs = 0;
    for (let i = 0; i < warmup; i++) {
      const t0 = performance.now();
      enqueue(i);
      cpuMs = Math.max(cpuMs, performance.now() - t0);
    }
    await native().cudaStreamSynchronize({ stream: this.stream });
    this.gate(2 * reps * cpuMs + 2);
    const events = [native().cudaEventRecord({ stream: this.stream, timing: true })];
    for (let i = 0; i < reps; i++) {
      enqueue(warmup + i);
      events.push(native().cudaEventRecord({ stream: this.stream, timing: true }));
    }
    await Promise.all([native().cudaStreamSynchronize({ stream: this.stream }), native().cudaStreamSynchronize({ stream: this.gateStream })]);
    const ms = events.slice(1).map((e, i) => native().cudaEventElapsedMs({ start: events[i], end: e }));
    for (const e of events) native().cudaEventFree({ event: e });
    return ms;
  }

  dispose(): void {
    native().cudaStreamDestroy({ stream: this.stream });
    native().cudaStreamDestroy({ stream: this.gateStream });
  }
}
