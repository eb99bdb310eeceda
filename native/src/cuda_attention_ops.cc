// JS entry points of the CUDA attention kernels: cudaKvWrite / cudaKvStoreHost (a step's new K/V into the device
// region and the pinned host paged KV), cudaAttendDecode (split-K decode), cudaLseMerge and cudaAttendPrefill,
// plus cudaAttendScratchBytes. Every field, size, range and overlap is checked here, before the GPU is looked
// for; the launches are asynchronous on the given stream.
#include <napi.h>

#include <algorithm>
#include <string>
#include <vector>

#include "args.h"
#include "cuda/cuda_attention.h"
#include "cuda_args.h"
#include "ops.h"

namespace kvoff {
namespace {

constexpr int64_t kMaxSafe = 9007199254740991LL;
constexpr int64_t kMaxTokens = 1LL << 24;     // tokens per write or prefill call
constexpr int64_t kMaxRowStride = 1LL << 32;  // floats between tokens of a source (q, k, v) buffer

// A {devHandle, devOffset} whose handle lies in the device range: a host arena's handle passed where a device
// one belongs is named here, on any machine, rather than after the GPU check as an unknown arena.
DevRef dev_field(const CudaArgs& a, const char* name) {
  const DevRef r = a.dev_ref(name);
  if (r.handle < kDevHandleBase) {
    const std::string field = std::string(name) + ".devHandle";
    a.fail(field.c_str(), "a device arena handle (from cudaArenaCreate, >= " + std::to_string(kDevHandleBase) + ")",
           std::to_string(r.handle) + ", a host arena's handle");
  }
  return r;
}

bool overlaps(const DevRef& a, uint64_t aBytes, const DevRef& b, uint64_t bBytes) {
  return aBytes > 0 && bBytes > 0 && a.handle == b.handle && a.offset < b.offset + bBytes && b.offset < a.offset + aBytes;
}

// Written ranges may not overlap what the same launch reads: CTAs run in no particular order.
void require_disjoint(const CudaArgs& a, const char* name, const DevRef& r, uint64_t bytes, const char* other, const DevRef& o, uint64_t oBytes) {
  if (overlaps(r, bytes, o, oBytes))
    a.fail(name, std::string("a range that does not overlap ") + other,
           "offset " + std::to_string(r.offset) + " + " + std::to_string(bytes) + " bytes, overlapping " + other + " at offset " +
               std::to_string(o.offset) + " + " + std::to_string(oBytes) + " in arena " + std::to_string(r.handle));
}

// Bytes of a [tokens, rowFloats] f32 buffer whose tokens are `stride` floats apart.
uint64_t strided_bytes(int64_t tokens, int64_t stride, int64_t rowFloats) {
  return tokens == 0 ? 0 : (static_cast<uint64_t>(tokens - 1) * static_cast<uint64_t>(stride) + static_cast<uint64_t>(rowFloats)) * 4;
}

// The fields k, v and srcRowStride shared by cudaKvWrite and cudaKvStoreHost.
struct KvSource {
  DevRef k, v;
  int64_t stride = 0;
  uint64_t bytes = 0;  // of each of k and v
};

KvSource read_source(const CudaArgs& a, int64_t tokens, int64_t rowFloats) {
  KvSource s;
  s.k = dev_field(a, "k");  // [tokens, numKvHeads, headDim] f32
  s.v = dev_field(a, "v");
  s.stride = a.integer_or("srcRowStride", rowFloats, kMaxRowStride, rowFloats);
  s.bytes = strided_bytes(tokens, s.stride, rowFloats);
  return s;
}

// Batched writes carry a token per sequence: tokens <= kBatchMaxSeqs, each index of `values` in [0, limit).
Span<int32_t> read_batch_ids(const CudaArgs& a, const char* name, int64_t tokens, int64_t limit) {
  if (tokens > kBatchMaxSeqs) a.fail_range("tokens", tokens, 0, kBatchMaxSeqs);
  const Span<int32_t> ids = a.i32(name, static_cast<size_t>(tokens));
  for (size_t i = 0; i < ids.size; ++i)
    if (ids.data[i] < 0 || ids.data[i] >= limit) a.fail_range(name, ids.data[i], 0, limit - 1);
  return ids;
}

Napi::Value CudaKvWrite(const Napi::CallbackInfo& info) {
  CudaArgs a(info, "cudaKvWrite");
  const int64_t H = a.integer("numKvHeads", 1, 1024);
  const int64_t D = a.integer("headDim", 1, 1024);
  const KvDtype dtype = a.dtype("dtype");
  const int64_t tokens = a.integer("tokens", 0, kMaxTokens);
  const KvSource src = read_source(a, tokens, H * D);
  const DevRef dst = dev_field(a, "dst");  // [numKvHeads, capacity, 2, headDim] 16-bit (batched: one such region per token)
  const int64_t capacity = a.integer("capacity", 1, 0x7fffffffLL);
  // Batched: token t is sequence t's, into slot slots[t] of the t-th region of dst.
  const bool batched = a.has("slots");
  const Span<int32_t> slots = batched ? read_batch_ids(a, "slots", tokens, capacity) : Span<int32_t>{};
  if (!batched && tokens > capacity) a.fail_range("tokens", tokens, 0, capacity);
  const int64_t slot = batched ? 0 : a.integer("slot", 0, capacity - tokens);
  const uint32_t stream = a.stream_handle("stream");
  const uint64_t dstBytes = static_cast<uint64_t>(batched ? tokens : 1) * static_cast<uint64_t>(H) * static_cast<uint64_t>(capacity) * static_cast<uint64_t>(D) * 4;
  require_disjoint(a, "dst", dst, dstBytes, "k", src.k, src.bytes);
  require_disjoint(a, "dst", dst, dstBytes, "v", src.v, src.bytes);
  a.require_gpu();
  a.require_stream("stream", stream);
  a.dev_range("k", src.k, src.bytes, 4);
  a.dev_range("v", src.v, src.bytes, 4);
  a.dev_range("dst", dst, dstBytes, 2);
  KvWriteCall call;
  call.k = src.k;
  call.v = src.v;
  call.srcRowStride = static_cast<uint64_t>(src.stride);
  call.tokens = static_cast<uint32_t>(tokens);
  call.numKvHeads = static_cast<uint32_t>(H);
  call.headDim = static_cast<uint32_t>(D);
  call.dtype = dtype;
  call.dst = dst;
  call.capacity = static_cast<uint32_t>(capacity);
  call.slot = static_cast<uint32_t>(slot);
  call.slots = batched ? slots.data : nullptr;
  call.stream = stream;
  a.check(cuda_kv_write(call));
  return a.env().Undefined();
}

Napi::Value CudaKvStoreHost(const Napi::CallbackInfo& info) {
  CudaArgs a(info, "cudaKvStoreHost");
  // The host region, as kvAppend reads it: [numBlocks, numKvHeads, blockSize, 2, headDim] 16-bit.
  std::shared_ptr<Arena> host = a.arena("handle");
  const int64_t numBlocks = a.integer("numBlocks", 1, 1 << 30);
  const int64_t H = a.integer("numKvHeads", 1, 1024);
  const int64_t D = a.integer("headDim", 1, 1024);
  const int64_t blockSize = a.integer("blockSize", 1, 1 << 30);
  const KvDtype dtype = a.dtype("dtype");
  const uint64_t offset = static_cast<uint64_t>(a.integer("offset", 0, kMaxSafe));
  if (offset % 2 != 0) a.fail("offset", "an even byte offset (the region holds 16-bit values)", std::to_string(offset));
  const size_t rows = mul_checked(a, "numBlocks", static_cast<size_t>(numBlocks) * static_cast<size_t>(H), static_cast<size_t>(blockSize));
  const size_t regionBytes = mul_checked(a, "numBlocks", rows, static_cast<size_t>(D) * 4);
  if (offset > host->bytes || regionBytes > host->bytes - offset)
    throw_error(a.env(), kErrRange, "Expected the KV region (offset " + std::to_string(offset) + " + " + std::to_string(regionBytes) +
                                        " bytes) to fit in arena of " + std::to_string(host->bytes) + " bytes but it runs past the end");
  const int64_t tokens = a.integer("tokens", 0, kMaxTokens);
  const KvSource src = read_source(a, tokens, H * D);
  // Batched: token t (sequence t's) lands at row offsets[t] of block blocks[t]; else at position start + t of blockIds.
  const bool batched = a.has("blocks");
  const Span<int32_t> blocks = batched ? read_batch_ids(a, "blocks", tokens, numBlocks) : Span<int32_t>{};
  const Span<int32_t> offsets = batched ? read_batch_ids(a, "offsets", tokens, blockSize) : Span<int32_t>{};
  if (batched) {  // two tokens on one row would race on the GPU
    std::vector<int64_t> rowsUsed;
    for (size_t t = 0; t < blocks.size; ++t) rowsUsed.push_back(static_cast<int64_t>(blocks.data[t]) * blockSize + offsets.data[t]);
    std::sort(rowsUsed.begin(), rowsUsed.end());
    const auto dup = std::adjacent_find(rowsUsed.begin(), rowsUsed.end());
    if (dup != rowsUsed.end())
      a.fail("blocks", "a distinct (block, offset) for each token", "block " + std::to_string(*dup / blockSize) + " offset " +
                                                                       std::to_string(*dup % blockSize) + " twice");
  }
  const Span<int32_t> blockIds = batched ? Span<int32_t>{} : a.i32("blockIds", SIZE_MAX);
  const int64_t mapped = static_cast<int64_t>(blockIds.size) * blockSize;  // positions the block table covers
  if (!batched && tokens > mapped) a.fail_range("tokens", tokens, 0, mapped);
  const int64_t start = batched ? 0 : a.integer("start", 0, std::min<int64_t>(mapped - tokens, 0x7fffffffLL - kMaxTokens));
  if (!batched && tokens > 0) {
    const size_t first = static_cast<size_t>(start / blockSize), last = static_cast<size_t>((start + tokens - 1) / blockSize);
    std::vector<int32_t> used;
    for (size_t b = first; b <= last; ++b) {
      if (blockIds.data[b] < 0 || blockIds.data[b] >= numBlocks) a.fail_range("blockIds", blockIds.data[b], 0, numBlocks - 1);
      used.push_back(blockIds.data[b]);
    }
    // Two logical blocks on one physical block would race on the GPU (kvAppend lets the last write win).
    std::sort(used.begin(), used.end());
    const auto dup = std::adjacent_find(used.begin(), used.end());
    if (dup != used.end())
      a.fail("blockIds", "distinct block ids where the tokens land", "block " + std::to_string(*dup) + " twice in entries " +
                                                                          std::to_string(first) + ".." + std::to_string(last));
  }
  const uint32_t stream = a.stream_handle("stream");
  a.require_gpu();
  a.require_stream("stream", stream);
  if (host->method != PinMethod::CudaHostRegister)
    a.fail("handle", "a host arena pinned and mapped by cudaHostRegister (created with pin: true while a GPU is usable)",
           std::string("an arena pinned by ") + pin_method_name(host->method));
  a.dev_range("k", src.k, src.bytes, 4);
  a.dev_range("v", src.v, src.bytes, 4);
  KvStoreHostCall call;
  call.k = src.k;
  call.v = src.v;
  call.srcRowStride = static_cast<uint64_t>(src.stride);
  call.tokens = static_cast<uint32_t>(tokens);
  call.numKvHeads = static_cast<uint32_t>(H);
  call.headDim = static_cast<uint32_t>(D);
  call.dtype = dtype;
  call.host = host;
  call.regionOffset = offset;
  call.blockSize = static_cast<uint32_t>(blockSize);
  call.blockIds = blockIds.data;
  call.start = static_cast<uint32_t>(start);
  call.blocks = batched ? blocks.data : nullptr;
  call.offsets = batched ? offsets.data : nullptr;
  call.stream = stream;
  a.check(cuda_kv_store_host(call));
  return a.env().Undefined();
}

// The shape fields of a device KV region shared by decode and prefill.
struct DevRegion {
  DevRef kv;
  int64_t capacity = 0, H = 0, D = 0, G = 0;
  KvDtype dtype = KvDtype::F16;
  uint64_t bytes = 0;
};

DevRegion read_dev_region(const CudaArgs& a, int64_t maxHeads) {
  DevRegion r;
  r.kv = dev_field(a, "kv");  // [numKvHeads, capacity, 2, headDim] 16-bit
  r.capacity = a.integer("capacity", 1, 0x7fffffffLL);
  r.H = a.integer("numKvHeads", 1, maxHeads);
  r.D = a.integer("headDim", 1, kAttendMaxHeadDim);
  r.dtype = a.dtype("dtype");
  r.G = a.integer("groupSize", 1, 256);
  r.bytes = static_cast<uint64_t>(r.H) * static_cast<uint64_t>(r.capacity) * static_cast<uint64_t>(r.D) * 4;
  return r;
}

Napi::Value CudaAttendDecode(const Napi::CallbackInfo& info) {
  CudaArgs a(info, "cudaAttendDecode");
  DevRegion r = read_dev_region(a, kAttendMaxHeads);
  // A batch: `seqs` sequences of numKvHeads heads each, their regions one after another in kv (and their queries
  // qSeqStride floats apart, their outputs and lse rows one after another): one launch as seqs * numKvHeads heads.
  const int64_t seqs = a.integer_or("seqs", 1, kAttendMaxHeads, 1);
  const int64_t seqHeads = r.H;
  if (seqs * seqHeads > kAttendMaxHeads)
    a.fail("seqs", "seqs * numKvHeads <= " + std::to_string(kAttendMaxHeads), std::to_string(seqs) + " * " + std::to_string(seqHeads));
  const int64_t seqQ = seqHeads * r.G * r.D;  // query floats of one sequence
  const int64_t qSeqStride = a.integer_or("qSeqStride", seqQ, kMaxRowStride, seqQ);
  r.H *= seqs;
  r.bytes *= static_cast<uint64_t>(seqs);
  const Span<int32_t> counts = a.i32("counts", static_cast<size_t>(r.H));  // [seqs * numKvHeads]
  int64_t maxCount = 0;
  for (size_t h = 0; h < counts.size; ++h) {
    if (counts.data[h] < 0 || counts.data[h] > r.capacity) a.fail_range("counts", counts.data[h], 0, r.capacity);
    maxCount = std::max<int64_t>(maxCount, counts.data[h]);
  }
  const DevRef q = dev_field(a, "q");      // [numKvHeads * G, headDim] f32
  const DevRef out = dev_field(a, "out");  // [numKvHeads * G, headDim] f32
  const DevRef lse = dev_field(a, "lse");  // [numKvHeads * G] f32
  const double scale = a.number("scale");
  const DevRef scratch = dev_field(a, "scratch");
  const uint64_t scratchBytes = static_cast<uint64_t>(a.integer("scratchBytes", 0, kMaxSafe));
  const uint32_t stream = a.stream_handle("stream");
  const int64_t chunks = std::max<int64_t>(1, attend_chunks(r.H, maxCount));
  const uint64_t needed = attend_scratch_bytes_for(r.H, r.G, r.D, chunks);
  if (scratchBytes < needed)
    throw_error(a.env(), kErrCapacity, "Expected room for " + std::to_string(needed) + " bytes of cudaAttendDecode.scratch but only " +
                                           std::to_string(scratchBytes) + " are available (" + std::to_string(chunks) + " chunks of " +
                                           std::to_string(attend_chunk_rows(r.H, maxCount)) + " rows for the longest head's " +
                                           std::to_string(maxCount) + "; size it with cudaAttendScratchBytes)");
  const uint64_t qBytes = static_cast<uint64_t>(r.H * r.G * r.D) * 4, lseBytes = static_cast<uint64_t>(r.H * r.G) * 4;
  const uint64_t qSpan = strided_bytes(seqs, qSeqStride, seqQ);  // q's extent (qBytes when contiguous)
  require_disjoint(a, "out", out, qBytes, "q", q, qSpan);
  require_disjoint(a, "out", out, qBytes, "kv", r.kv, r.bytes);
  require_disjoint(a, "lse", lse, lseBytes, "q", q, qSpan);
  require_disjoint(a, "lse", lse, lseBytes, "kv", r.kv, r.bytes);
  require_disjoint(a, "lse", lse, lseBytes, "out", out, qBytes);
  require_disjoint(a, "scratch", scratch, needed, "kv", r.kv, r.bytes);
  require_disjoint(a, "scratch", scratch, needed, "q", q, qSpan);
  require_disjoint(a, "scratch", scratch, needed, "out", out, qBytes);
  require_disjoint(a, "scratch", scratch, needed, "lse", lse, lseBytes);
  a.require_gpu();
  a.require_stream("stream", stream);
  a.dev_range("kv", r.kv, r.bytes, 2);
  a.dev_range("q", q, qSpan, 4);
  a.dev_range("out", out, qBytes, 4);
  a.dev_range("lse", lse, lseBytes, 4);
  a.dev_range("scratch", scratch, scratchBytes, 4);
  AttendDecodeCall call;
  call.seqHeads = static_cast<uint32_t>(seqHeads);
  call.qSeqStride = static_cast<uint64_t>(qSeqStride);
  call.kv = r.kv;
  call.capacity = static_cast<uint32_t>(r.capacity);
  call.numKvHeads = static_cast<uint32_t>(r.H);
  call.headDim = static_cast<uint32_t>(r.D);
  call.groupSize = static_cast<uint32_t>(r.G);
  call.dtype = r.dtype;
  call.counts = counts.data;
  call.q = q;
  call.scale = static_cast<float>(scale);
  call.out = out;
  call.lse = lse;
  call.scratch = scratch;
  call.stream = stream;
  a.check(cuda_attend_decode(call));
  return a.env().Undefined();
}

// Pure arithmetic (no GPU needed): the scratch cudaAttendDecode needs for any call with counts <= maxRows.
Napi::Value CudaAttendScratchBytes(const Napi::CallbackInfo& info) {
  Args a(info, "cudaAttendScratchBytes");
  const int64_t H = a.integer("numKvHeads", 1, kAttendMaxHeads);
  const int64_t G = a.integer("groupSize", 1, 256);
  const int64_t D = a.integer("headDim", 1, kAttendMaxHeadDim);
  const int64_t maxRows = a.integer("maxRows", 0, 0x7fffffffLL);
  return Napi::Number::New(a.env(), static_cast<double>(attend_scratch_bytes(H, G, D, maxRows)));
}

Napi::Value CudaLseMerge(const Napi::CallbackInfo& info) {
  CudaArgs a(info, "cudaLseMerge");
  const int64_t rows = a.integer("rows", 0, 1 << 30);
  const int64_t D = a.integer("headDim", 1, 1 << 16);
  const DevRef oA = dev_field(a, "oA"), lseA = dev_field(a, "lseA");  // [rows, headDim], [rows] f32
  const DevRef oB = dev_field(a, "oB"), lseB = dev_field(a, "lseB");
  const DevRef out = dev_field(a, "out"), lseOut = dev_field(a, "lseOut");
  const uint32_t stream = a.stream_handle("stream");
  const uint64_t oBytes = static_cast<uint64_t>(rows) * static_cast<uint64_t>(D) * 4, lBytes = static_cast<uint64_t>(rows) * 4;
  // Like lseMerge, out may be oA or oB and lseOut lseA or lseB (one lane reads each element before writing it);
  // a partial overlap would make the result depend on the order CTAs run in.
  auto same = [](const DevRef& x, const DevRef& y) { return x.handle == y.handle && x.offset == y.offset; };
  if (!same(out, oA)) require_disjoint(a, "out", out, oBytes, "oA (unless it is oA itself)", oA, oBytes);
  if (!same(out, oB)) require_disjoint(a, "out", out, oBytes, "oB (unless it is oB itself)", oB, oBytes);
  require_disjoint(a, "out", out, oBytes, "lseA", lseA, lBytes);
  require_disjoint(a, "out", out, oBytes, "lseB", lseB, lBytes);
  require_disjoint(a, "out", out, oBytes, "lseOut", lseOut, lBytes);
  if (!same(lseOut, lseA)) require_disjoint(a, "lseOut", lseOut, lBytes, "lseA (unless it is lseA itself)", lseA, lBytes);
  if (!same(lseOut, lseB)) require_disjoint(a, "lseOut", lseOut, lBytes, "lseB (unless it is lseB itself)", lseB, lBytes);
  require_disjoint(a, "lseOut", lseOut, lBytes, "oA", oA, oBytes);
  require_disjoint(a, "lseOut", lseOut, lBytes, "oB", oB, oBytes);
  a.require_gpu();
  a.require_stream("stream", stream);
  a.dev_range("oA", oA, oBytes, 4);
  a.dev_range("lseA", lseA, lBytes, 4);
  a.dev_range("oB", oB, oBytes, 4);
  a.dev_range("lseB", lseB, lBytes, 4);
  a.dev_range("out", out, oBytes, 4);
  a.dev_range("lseOut", lseOut, lBytes, 4);
  LseMergeCall call;
  call.rows = static_cast<uint32_t>(rows);
  call.headDim = static_cast<uint32_t>(D);
  call.oA = oA;
  call.lseA = lseA;
  call.oB = oB;
  call.lseB = lseB;
  call.out = out;
  call.lseOut = lseOut;
  call.stream = stream;
  a.check(cuda_lse_merge(call));
  return a.env().Undefined();
}

Napi::Value CudaAttendPrefill(const Napi::CallbackInfo& info) {
  CudaArgs a(info, "cudaAttendPrefill");
  const DevRegion r = read_dev_region(a, 1024);
  const int64_t T = a.integer("T", 0, kMaxTokens);
  if (T > r.capacity) a.fail_range("T", T, 0, r.capacity);
  const int64_t start = a.integer("start", 0, r.capacity - T);  // the queries' rows must already be in the region
  const int64_t rowFloats = r.H * r.G * r.D;
  const DevRef q = dev_field(a, "q");  // [T, numKvHeads * G, headDim] f32, tokens qRowStride floats apart
  const int64_t qRowStride = a.integer_or("qRowStride", rowFloats, kMaxRowStride, rowFloats);
  const double scale = a.number("scale");
  const DevRef out = dev_field(a, "out");  // [T, numKvHeads * G, headDim] f32
  const DevRef lse = dev_field(a, "lse");  // [T, numKvHeads * G] f32
  const uint32_t stream = a.stream_handle("stream");
  const bool tensorCores = a.boolean_or("tensorCores", true);
  const uint64_t qBytes = strided_bytes(T, qRowStride, rowFloats);
  const uint64_t outBytes = static_cast<uint64_t>(T * rowFloats) * 4, lseBytes = static_cast<uint64_t>(T * r.H * r.G) * 4;
  require_disjoint(a, "out", out, outBytes, "q", q, qBytes);
  require_disjoint(a, "out", out, outBytes, "kv", r.kv, r.bytes);
  require_disjoint(a, "lse", lse, lseBytes, "q", q, qBytes);
  require_disjoint(a, "lse", lse, lseBytes, "kv", r.kv, r.bytes);
  require_disjoint(a, "lse", lse, lseBytes, "out", out, outBytes);
  a.require_gpu();
  a.require_stream("stream", stream);
  a.dev_range("q", q, qBytes, 4);
  a.dev_range("kv", r.kv, r.bytes, 2);
  a.dev_range("out", out, outBytes, 4);
  a.dev_range("lse", lse, lseBytes, 4);
  AttendPrefillCall call;
  call.q = q;
  call.qRowStride = static_cast<uint64_t>(qRowStride);
  call.T = static_cast<uint32_t>(T);
  call.start = static_cast<uint32_t>(start);
  call.kv = r.kv;
  call.capacity = static_cast<uint32_t>(r.capacity);
  call.numKvHeads = static_cast<uint32_t>(r.H);
  call.headDim = static_cast<uint32_t>(r.D);
  call.groupSize = static_cast<uint32_t>(r.G);
  call.dtype = r.dtype;
  call.scale = static_cast<float>(scale);
  call.out = out;
  call.lse = lse;
  call.stream = stream;
  call.tensorCores = tensorCores;
  a.check(cuda_attend_prefill(call));
  return a.env().Undefined();
}

}  // namespace

void register_cuda_attention_ops(Napi::Env env, Napi::Object exports) {
  exports.Set("cudaKvWrite", Napi::Function::New(env, CudaKvWrite, "cudaKvWrite"));
  exports.Set("cudaKvStoreHost", Napi::Function::New(env, CudaKvStoreHost, "cudaKvStoreHost"));
  exports.Set("cudaAttendDecode", Napi::Function::New(env, CudaAttendDecode, "cudaAttendDecode"));
  exports.Set("cudaAttendScratchBytes", Napi::Function::New(env, CudaAttendScratchBytes, "cudaAttendScratchBytes"));
  exports.Set("cudaLseMerge", Napi::Function::New(env, CudaLseMerge, "cudaLseMerge"));
  exports.Set("cudaAttendPrefill", Napi::Function::New(env, CudaAttendPrefill, "cudaAttendPrefill"));
}

}  // namespace kvoff
