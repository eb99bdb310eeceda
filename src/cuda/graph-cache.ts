// CUDA graphs by key: the first run of a key captures what its callback enqueues, every run replays the capture.
// For step parts with many small launches and no per-step arguments (a layer's dense kernels): one launch instead of many.
import { native } from '../native.js';

export class GraphCache {
  readonly #graphs = new Map<string, number>();
  constructor(readonly stream: number) {}

  /** Launches the graph of `key`, capturing `enqueue` first if it is new. Its buffers must not move between runs. */
  run(key: string, enqueue: () => void): void {
    let graph = this.#graphs.get(key);
    if (graph === undefined) {
      native().cudaGraphBegin({ stream: this.stream });
      try {
        enqueue();
      } finally {
        graph = native().cudaGraphEnd({ stream: this.stream }); // ends the capture even when enqueue threw
      }
      this.#graphs.set(key, graph);
    }
    native().cudaGraphLaunch({ graph, stream: this.stream });
  }

  get size(): number {
    return this.#graphs.size;
  }

  dispose(): void {
    for (const g of this.#graphs.values()) native().cudaGraphFree({ graph: g });
    this.#graphs.clear();
  }
}
