// A small ONNX graph builder over onnx-proto: float32/int64 initializers, nodes, typed inputs and outputs.
import onnxProto from 'onnx-proto';
import type { onnx as Onnx } from 'onnx-proto';
import { KvoffArgumentError, KvoffCapacityError } from '../../errors.js';

// onnx-proto is CommonJS (module.exports = { onnx }), so its namespace comes through the default import.
const { onnx } = onnxProto;

/** ONNX opset of the default domain. 17 has every op used here with the attribute forms used here (ReduceMean axes). */
export const OPSET = 17;
/** IR version 8 is the newest onnx-proto 8 knows; it carries opset 17 and onnxruntime 1.30 reads it. */
export const IR_VERSION = 8;
/** protobuf messages are limited to 2 GiB; initializers beyond that need sharding (see buildFinalGraph's vocab range). */
export const MAX_MODEL_BYTES = 2 ** 31 - 1;

/** A dimension: a fixed size or a symbolic name such as "T". */
export type Dim = number | string;

/** Attributes used here are all integers or integer lists (axis, keepdims, transB, axes). */
type AttrValue = number | number[];

/** Little-endian bytes of a typed array, without a copy. */
function bytesOf(a: Float32Array | BigInt64Array): Uint8Array {
  return new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
}

function valueInfo(name: string, elemType: number, dims: Dim[]): Onnx.IValueInfoProto {
  return {
    name,
    type: {
      tensorType: {
        elemType,
        shape: { dim: dims.map((d) => (typeof d === 'number' ? { dimValue: d } : { dimParam: d })) },
      },
    },
  };
}

function attribute(name: string, v: AttrValue): Onnx.IAttributeProto {
  const T = onnx.AttributeProto.AttributeType;
  const ints = Array.isArray(v) ? v : [v];
  if (!ints.every(Number.isInteger)) throw new KvoffArgumentError(`attribute ${name}`, 'integers', v);
  return Array.isArray(v) ? { name, type: T.INTS, ints: v } : { name, type: T.INT, i: v };
}

/** Collects nodes and initializers; `node` returns its output name so graphs read as expressions. */
export class GraphBuilder {
  readonly #nodes: Onnx.INodeProto[] = [];
  readonly #inits: Onnx.ITensorProto[] = [];
  readonly #inputs: Onnx.IValueInfoProto[] = [];
  readonly #outputs: Onnx.IValueInfoProto[] = [];
  readonly #names = new Set<string>();
  #initBytes = 0;
  #tmp = 0;

  constructor(readonly name: string) {}

  #claim(name: string): string {
    if (this.#names.has(name)) throw new KvoffArgumentError(`${this.name} value names`, 'unique names', `${name} twice`);
    this.#names.add(name);
    return name;
  }

  input(name: string, dims: Dim[]): string {
    this.#inputs.push(valueInfo(this.#claim(name), onnx.TensorProto.DataType.FLOAT, dims));
    return name;
  }

  /** Marks `value` as a float output called `name` (an Identity node renames it when the names differ). */
  output(value: string, name: string, dims: Dim[]): void {
    if (value !== name) this.node('Identity', [value], {}, name);
    this.#outputs.push(valueInfo(name, onnx.TensorProto.DataType.FLOAT, dims));
  }

  /** A float32 initializer; `data` is viewed, not copied, until encode(). */
  f32(name: string, dims: number[], data: Float32Array): string {
    const n = dims.reduce((a, b) => a * b, 1);
    if (!(data instanceof Float32Array) || data.length !== n) {
      throw new KvoffArgumentError(`${this.name}:${name}`, `Float32Array(${n}) of shape [${dims.join(', ')}]`, data);
    }
    this.#inits.push({ name: this.#claim(name), dims, dataType: onnx.TensorProto.DataType.FLOAT, rawData: bytesOf(data) });
    this.#initBytes += data.byteLength;
    return name;
  }

  f32Scalar(name: string, value: number): string {
    return this.f32(name, [], Float32Array.of(value));
  }

  i64(name: string, values: number[]): string {
    const data = BigInt64Array.from(values, (v) => BigInt(v));
    this.#inits.push({ name: this.#claim(name), dims: [values.length], dataType: onnx.TensorProto.DataType.INT64, rawData: bytesOf(data) });
    return name;
  }

  /** Adds a node; outputs get fresh names unless given. Returns the first output's name. */
  node(op: string, inputs: string[], attrs: Record<string, AttrValue> = {}, ...outputs: string[]): string {
    const outs = outputs.length > 0 ? outputs : [`${op.toLowerCase()}_${this.#tmp}`];
    for (const o of outs) this.#claim(o);
    this.#nodes.push({
      opType: op,
      name: `${op}_${this.#tmp++}`,
      input: inputs,
      output: outs,
      attribute: Object.entries(attrs).map(([k, v]) => attribute(k, v)),
    });
    return outs[0];
  }

  /** Several outputs at once (Split). */
  nodeN(op: string, inputs: string[], outputs: string[], attrs: Record<string, AttrValue> = {}): string[] {
    this.node(op, inputs, attrs, ...outputs);
    return outputs;
  }

  get initializerBytes(): number {
    return this.#initBytes;
  }

  model(): Onnx.IModelProto {
    return {
      irVersion: IR_VERSION,
      producerName: 'kvoff',
      opsetImport: [{ domain: '', version: OPSET }],
      graph: { name: this.name, node: this.#nodes, initializer: this.#inits, input: this.#inputs, output: this.#outputs },
    };
  }

  /** Serialized ModelProto bytes, what InferenceSession.create takes. Copies every initializer once. */
  encode(): Uint8Array {
    // Leave 1 MiB for the graph itself; protobuf cannot encode more than 2 GiB in one message.
    const room = MAX_MODEL_BYTES - (1 << 20);
    if (this.#initBytes > room) {
      throw new KvoffCapacityError(`initializer bytes in ONNX graph ${this.name}`, this.#initBytes, room, 'shard the graph');
    }
    return encodeModel(this.model());
  }
}

export function encodeModel(model: Onnx.IModelProto): Uint8Array {
  return onnx.ModelProto.encode(model).finish();
}

export function decodeModel(bytes: Uint8Array): Onnx.ModelProto {
  return onnx.ModelProto.decode(bytes);
}
