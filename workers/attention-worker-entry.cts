// The CPU attention pool's entry point, CommonJS on purpose: piscina require()s its filename first, and on Node
// 20.19+ that loads an ES module through require(esm), whose module facade aborted the whole process from a worker
// thread (Node 20.20.2 on the H100 machine, 2026-12-06: "Assertion failed: facade->InstantiateModule(...)" in
// CreateRequiredModuleFacade, during the GPU suite). From here each thread import()s the worker module once.
import type { WorkerResult, WorkerTask } from './attention-worker.js';

let worker: Promise<typeof import('./attention-worker.js')> | null = null;

module.exports = (task: WorkerTask): Promise<WorkerResult> => (worker ??= import('./attention-worker.js')).then((m) => m.default(task));
