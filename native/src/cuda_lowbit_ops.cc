// JS entry points of the device tier's low-bit kernels: cudaKiviQuantize, cudaKiviScores, cudaTopK,
// cudaKiviAttend (asynchronous on a stream) and cudaLowBitLayout (the section layout, for the TS side to check
// against). Every field is checked here, before the GPU is looked for; the layout is derived from the shape
// fields, never taken from JS, so native and TS cannot disagree silently.
#include <napi.h>

#include <algorithm>
#include <string>
#include <tuple>

#include "args.h"
#include "cuda/cuda_device.h"
#include "cuda/cuda_lowbit.h"
#include "cuda_args.h"
#include "ops.h"

namespace kvoff {
namespace {

constexpr int64_t kMaxSafe = 9007199254740991LL;
constexpr int64_t kMaxLd = 0x7fffffffLL;

LowBitShape read_shape(const Args& a) {
  LowBitShape s;
  s.numKvHeads = static_cast<uint32_t>(a.integer("numKvHeads", 1, 1024));
  const int64_t D = a.integer("headDim", 1, 4096);
  if (D != 32 && D != 64 && D != 128 && D != 256) a.fail("headDim", "32, 64, 128 or 256", std::to_string(D));
  s.headDim = static_cast<uint32_t>(D);
  const int64_t bits = a.integer("bits", 1, 4);
  if (bits == 3) a.fail("bits", "1, 2 or 4", "3");
  s.bits = static_cast<uint32_t>(bits);
  const int64_t kg = a.integer("keyGroupSize", 1, 4096);
  if (kg != 32 && kg != 64) a.fail("keyGroupSize", "32 or 64", std::to_string(kg));
  s.keyGroupSize = static_cast<uint32_t>(kg);
  const int64_t vg = a.integer("valueGroupSize", 1, 4096);
  if (D % vg != 0 || vg % 8 != 0)
    a.fail("valueGroupSize", "a multiple of 8 that divides headDim " + std::to_string(D), std::to_string(vg));
  s.valueGroupSize = static_cast<uint32_t>(vg);
  s.capacityTokens = static_cast<uint64_t>(a.integer("capacityTokens", 1, static_cast<int64_t>(kLowBitMaxCapacity)));
  s.keysOnly = a.boolean_or("keysOnly", false);
  return s;
}

bool overlaps(const DevRef& a, uint64_t aBytes, const DevRef& b, uint64_t bBytes) {
  return a.handle == b.handle && aBytes > 0 && bBytes > 0 && a.offset < b.offset + bBytes && b.offset < a.offset + aBytes;
}

void no_overlap(const CudaArgs& a, const char* name, const DevRef& w, uint64_t wBytes, const char* other, const DevRef& o, uint64_t oBytes) {
  if (overlaps(w, wBytes, o, oBytes))
    a.fail(name, std::string("a range that does not overlap ") + other, "an overlapping range at offset " + std::to_string(w.offset));
}

Napi::Value CudaLowBitLayout(const Napi::CallbackInfo& info) {
  Args a(info, "cudaLowBitLayout");
  const LowBitLayout l = lowbit_layout(read_shape(a));
  Napi::Object o = Napi::Object::New(a.env());
  auto put = [&](const char* k, uint64_t v) { o.Set(k, Napi::Number::New(a.env(), static_cast<double>(v))); };
  put("sectionBytes", l.sectionBytes);
  put("layerBytes", l.layerBytes);
  put("keyCodes", l.keyCodes);
  put("keyZero", l.keyZero);
  put("keyScale", l.keyScale);
  put("valueCodes", l.valueCodes);
  put("valueZero", l.valueZero);
  put("valueScale", l.valueScale);
  return o;
}

// Values of every token in [first, first + tokens) (unless keysOnly); keys of the key groups lying wholly
// inside that range, [ceil(first / KG), floor((first + tokens) / KG)). Returns which key groups those were.
Napi::Value CudaKiviQuantize(const Napi::CallbackInfo& info) {
  CudaArgs a(info, "cudaKiviQuantize");
  KiviQuantizeCall c;
  c.shape = read_shape(a);
  c.layout = lowbit_layout(c.shape);
  const int64_t cap = static_cast<int64_t>(c.shape.capacityTokens);
  c.kv = a.dev_ref("kv");  // [numKvHeads, kvCapacity, 2, headDim] 16-bit
  c.bf16 = a.dtype("dtype") == KvDtype::BF16;
  c.kvCapacity = static_cast<uint64_t>(a.integer("kvCapacity", 1, kMaxLd));
  c.first = static_cast<uint64_t>(a.integer("first", 0, cap));
  c.tokens = static_cast<uint64_t>(a.integer("tokens", 0, std::min<int64_t>(cap - static_cast<int64_t>(c.first), static_cast<int64_t>(c.kvCapacity))));
  c.kvFirstRow = static_cast<uint64_t>(a.integer("kvFirstRow", 0, static_cast<int64_t>(c.kvCapacity - c.tokens)));
  c.lowBit = a.dev_ref("lowBit");
  c.stream = a.stream_handle("stream");
  const uint64_t KG = c.shape.keyGroupSize;
  c.group0 = (c.first + KG - 1) / KG;
  const uint64_t gEnd = (c.first + c.tokens) / KG;
  c.groups = gEnd > c.group0 ? gEnd - c.group0 : 0;
  const uint64_t kvBytes = static_cast<uint64_t>(c.shape.numKvHeads) * c.kvCapacity * c.shape.headDim * 4;
  a.require_gpu();
  a.require_stream("stream", c.stream);
  a.dev_range("kv", c.kv, kvBytes, 16);
  a.dev_range("lowBit", c.lowBit, c.layout.layerBytes, kLowBitAlign);
  no_overlap(a, "lowBit", c.lowBit, c.layout.layerBytes, "kv", c.kv, kvBytes);
  a.check(cuda_kivi_quantize(c));
  Napi::Object r = Napi::Object::New(a.env());
  r.Set("firstKeyGroup", Napi::Number::New(a.env(), static_cast<double>(c.group0)));
  r.Set("keyGroups", Napi::Number::New(a.env(), static_cast<double>(c.groups)));
  return r;
}

Napi::Value CudaKiviScores(const Napi::CallbackInfo& info) {
  CudaArgs a(info, "cudaKiviScores");
  KiviScoresCall c;
  c.shape = read_shape(a);
  c.layout = lowbit_layout(c.shape);
  c.lowBit = a.dev_ref("lowBit");
  c.groupSize = static_cast<uint32_t>(a.integer("groupSize", 1, 256));
  c.q = a.dev_ref("q");  // [numKvHeads * G, headDim] f32
  c.numGroups = static_cast<uint64_t>(a.integer("numGroups", 0, static_cast<int64_t>(c.layout.maxGroups)));
  const uint64_t N = c.numGroups * c.shape.keyGroupSize;
  c.out = a.dev_ref("out");  // [numKvHeads, ldOut] f32
  c.ldOut = static_cast<uint64_t>(a.integer("ldOut", std::max<int64_t>(static_cast<int64_t>(N), 1), kMaxLd));
  c.stream = a.stream_handle("stream");
  const uint64_t H = c.shape.numKvHeads;
  const uint64_t qBytes = H * c.groupSize * c.shape.headDim * 4, outBytes = H * c.ldOut * 4;
  a.require_gpu();
  a.require_stream("stream", c.stream);
  a.dev_range("lowBit", c.lowBit, c.layout.layerBytes, kLowBitAlign);
  a.dev_range("q", c.q, qBytes, 4);
  a.dev_range("out", c.out, outBytes, 4);
  no_overlap(a, "out", c.out, outBytes, "lowBit", c.lowBit, c.layout.layerBytes);
  no_overlap(a, "out", c.out, outBytes, "q", c.q, qBytes);
  a.check(cuda_kivi_scores(c));
  return a.env().Undefined();
}

Napi::Value CudaTopK(const Napi::CallbackInfo& info) {
  CudaArgs a(info, "cudaTopK");
  TopKCall c;
  c.scores = a.dev_ref("scores");  // [rows, ld] f32
  c.rows = static_cast<uint32_t>(a.integer("rows", 1, 65535));
  c.ld = static_cast<uint64_t>(a.integer("ld", 1, kMaxLd));
  c.first = static_cast<uint64_t>(a.integer("first", 0, static_cast<int64_t>(c.ld) - 1));
  c.n = static_cast<uint32_t>(a.integer("n", 1, std::min<int64_t>(kTopKMaxN, static_cast<int64_t>(c.ld - c.first))));
  c.k = static_cast<uint32_t>(a.integer("k", 1, std::min<int64_t>(c.n, kTopKMaxK)));
  // Per-row lengths (a batch whose sequences stand at different positions): each in [k, n].
  if (a.has("counts")) {
    if (c.rows > kTopKMaxRowCounts) a.fail("rows", "at most " + std::to_string(kTopKMaxRowCounts) + " rows with counts", std::to_string(c.rows));
    const Span<int32_t> counts = a.i32("counts", c.rows);
    for (size_t r = 0; r < counts.size; ++r)
      if (counts.data[r] < static_cast<int64_t>(c.k) || counts.data[r] > static_cast<int64_t>(c.n)) a.fail_range("counts", counts.data[r], c.k, c.n);
    c.counts = counts.data;
  }
  c.out = a.dev_ref("out");  // [rows, k] int32
  c.hasMask = a.has("mask");
  if (c.hasMask) c.mask = a.dev_ref("mask");  // u8 [rows, ld]
  c.stream = a.stream_handle("stream");
  const uint64_t sBytes = static_cast<uint64_t>(c.rows) * c.ld * 4, oBytes = static_cast<uint64_t>(c.rows) * c.k * 4;
  const uint64_t mBytes = c.hasMask ? static_cast<uint64_t>(c.rows) * c.ld : 0;
  a.require_gpu();
  a.require_stream("stream", c.stream);
  a.dev_range("scores", c.scores, sBytes, 4);
  a.dev_range("out", c.out, oBytes, 4);
  no_overlap(a, "out", c.out, oBytes, "scores", c.scores, sBytes);
  if (c.hasMask) {
    a.dev_range("mask", c.mask, mBytes, 1);
    no_overlap(a, "mask", c.mask, mBytes, "scores", c.scores, sBytes);
    no_overlap(a, "mask", c.mask, mBytes, "out", c.out, oBytes);
  }
  a.check(cuda_topk(c));
  return a.env().Undefined();
}

Napi::Value CudaKiviAttend(const Napi::CallbackInfo& info) {
  CudaArgs a(info, "cudaKiviAttend");
  KiviAttendCall c;
  c.shape = read_shape(a);
  if (c.shape.keysOnly) a.fail("keysOnly", "false (attention reads the value copy)", "true");
  c.layout = lowbit_layout(c.shape);
  c.lowBit = a.dev_ref("lowBit");
  c.groupSize = static_cast<uint32_t>(a.integer("groupSize", 1, kAttendMaxG));
  c.rows = static_cast<uint32_t>(a.integer_or("rows", 1, kAttendMaxG / c.groupSize, 1));  // rows * G <= kAttendMaxG
  const uint64_t H = c.shape.numKvHeads, G = c.groupSize, D = c.shape.headDim, R = c.rows;
  const int64_t rowFloats = static_cast<int64_t>(H * G * D);
  c.q = a.dev_ref("q");  // row r at + r * qRowStride floats: [numKvHeads * G, headDim] f32
  c.qRowStride = static_cast<uint64_t>(a.integer_or("qRowStride", rowFloats, kMaxLd, rowFloats));
  c.scale = static_cast<float>(a.number("scale"));
  const int64_t maxTokens = static_cast<int64_t>(c.layout.maxGroups * c.shape.keyGroupSize);
  c.first = static_cast<uint64_t>(a.integer("first", 0, maxTokens));
  c.end = static_cast<uint64_t>(a.integer("end", static_cast<int64_t>(c.first), maxTokens));
  c.hasExclude = a.has("exclude");
  if (c.hasExclude) {
    c.exclude = a.dev_ref("exclude");  // u8 [numKvHeads, ldExclude]
    c.ldExclude = static_cast<uint64_t>(a.integer("ldExclude", std::max<int64_t>(static_cast<int64_t>(c.end), 1), kMaxLd));
  }
  c.out = a.dev_ref("out");  // row r at + r * outRowStride floats: [numKvHeads * G, headDim] f32
  c.outRowStride = static_cast<uint64_t>(a.integer_or("outRowStride", rowFloats, kMaxLd, rowFloats));
  c.lse = a.dev_ref("lse");  // [rows, numKvHeads * G] f32
  c.scratch = a.dev_ref("scratch");
  const uint64_t scratchBytes = static_cast<uint64_t>(a.integer("scratchBytes", 0, kMaxSafe));
  c.stream = a.stream_handle("stream");
  const uint64_t needed = kivi_attend_scratch_bytes(H, G, D, kivi_attend_chunks(c.first, c.end), R);
  if (scratchBytes < needed)
    throw_error(a.env(), kErrCapacity,
                "Expected room for " + std::to_string(needed) + " bytes of cudaKiviAttend.scratch but only " + std::to_string(scratchBytes) +
                    " are available; size it with cudaKiviAttendScratchBytes({numKvHeads, groupSize, headDim, maxTokens, rows})");
  const uint64_t qBytes = ((R - 1) * c.qRowStride + H * G * D) * 4, outBytes = ((R - 1) * c.outRowStride + H * G * D) * 4;
  const uint64_t lseBytes = R * H * G * 4, exBytes = c.hasExclude ? H * c.ldExclude : 0;
  a.require_gpu();
  a.require_stream("stream", c.stream);
  a.dev_range("lowBit", c.lowBit, c.layout.layerBytes, kLowBitAlign);
  a.dev_range("q", c.q, qBytes, 4);
  if (c.hasExclude) a.dev_range("exclude", c.exclude, exBytes, 1);
  a.dev_range("out", c.out, outBytes, 4);
  a.dev_range("lse", c.lse, lseBytes, 4);
  a.dev_range("scratch", c.scratch, scratchBytes, 16);
  no_overlap(a, "out", c.out, outBytes, "q", c.q, qBytes);
  no_overlap(a, "out", c.out, outBytes, "lse", c.lse, lseBytes);
  no_overlap(a, "out", c.out, outBytes, "lowBit", c.lowBit, c.layout.layerBytes);
  no_overlap(a, "lse", c.lse, lseBytes, "q", c.q, qBytes);
  no_overlap(a, "lse", c.lse, lseBytes, "lowBit", c.lowBit, c.layout.layerBytes);
  for (const auto& [name, ref, bytes] : {std::tuple<const char*, DevRef, uint64_t>{"q", c.q, qBytes}, {"out", c.out, outBytes}, {"lse", c.lse, lseBytes},
                                         {"lowBit", c.lowBit, c.layout.layerBytes}, {"exclude", c.exclude, exBytes}})
    no_overlap(a, "scratch", c.scratch, needed, name, ref, bytes);
  a.check(cuda_kivi_attend(c));
  return a.env().Undefined();
}

}  // namespace

void register_cuda_lowbit_ops(Napi::Env env, Napi::Object exports) {
  exports.Set("cudaLowBitLayout", Napi::Function::New(env, CudaLowBitLayout, "cudaLowBitLayout"));
  exports.Set("cudaKiviQuantize", Napi::Function::New(env, CudaKiviQuantize, "cudaKiviQuantize"));
  exports.Set("cudaKiviScores", Napi::Function::New(env, CudaKiviScores, "cudaKiviScores"));
  exports.Set("cudaTopK", Napi::Function::New(env, CudaTopK, "cudaTopK"));
  exports.Set("cudaKiviAttend", Napi::Function::New(env, CudaKiviAttend, "cudaKiviAttend"));
}

}  // namespace kvoff
