// Paged host KV entry points: append rows into blocks, exact attention of query groups over block lists.
#include <algorithm>
#include <cmath>

#include "args.h"
#include "ops.h"
#include "simd/kernels.h"

namespace kvoff {
namespace {

// The layer region of a paged KV cache inside an arena:
// [numBlocks, numKvHeads, blockSize, 2 (K then V), headDim] of fp16/bf16.
struct Region {
  std::shared_ptr<Arena> arena;
  uint8_t* base;
  int numBlocks, numKvHeads, headDim, blockSize;
  KvDtype dtype;
  size_t blockBytes;
};

Region read_region(const Args& a) {
  Region r;
  r.arena = a.arena("handle");
  r.numBlocks = static_cast<int>(a.integer("numBlocks", 1, 1 << 30));
  r.numKvHeads = static_cast<int>(a.integer("numKvHeads", 1, 1024));
  r.headDim = static_cast<int>(a.integer("headDim", 1, 1024));
  r.blockSize = static_cast<int>(a.integer("blockSize", 1, 1 << 30));
  r.dtype = a.dtype("dtype");
  r.blockBytes = static_cast<size_t>(r.numKvHeads) * r.blockSize * 2 * r.headDim * 2;
  const size_t offset = static_cast<size_t>(a.integer("offset", 0, 9007199254740991LL));
  const size_t regionBytes = mul_checked(a, "numBlocks", r.blockBytes, static_cast<size_t>(r.numBlocks));
  if (offset > r.arena->bytes || regionBytes > r.arena->bytes - offset)
    throw_error(a.env(), kErrRange, "Expected the KV region (offset " + std::to_string(offset) + " + " + std::to_string(regionBytes) +
                                        " bytes) to fit in arena of " + std::to_string(r.arena->bytes) + " bytes but it runs past the end");
  r.base = r.arena->ptr + offset;
  return r;
}

Napi::Value KvAppend(const Napi::CallbackInfo& info) {
  Args a(info, "kvAppend");
  Region r = read_region(a);
  auto slots = a.i32("slots", SIZE_MAX);
  const size_t n = slots.size;
  const size_t rowElems = static_cast<size_t>(r.numKvHeads) * r.headDim;
  auto k = a.f32("k", mul_checked(a, "k", n, rowElems));  // [n, numKvHeads, headDim]
  auto v = a.f32("v", n * rowElems);                      // [n, numKvHeads, headDim]
  const int64_t maxSlot = static_cast<int64_t>(r.numBlocks) * r.blockSize - 1;
  for (size_t i = 0; i < n; ++i)
    if (slots.data[i] < 0 || slots.data[i] > maxSlot) a.fail_range("slots", slots.data[i], 0, maxSlot);
  const size_t D = r.headDim;
  for (size_t i = 0; i < n; ++i) {
    const int slot = slots.data[i];
    uint8_t* block = r.base + static_cast<size_t>(slot / r.blockSize) * r.blockBytes;
    const int off = slot % r.blockSize;
    for (int h = 0; h < r.numKvHeads; ++h) {
      uint16_t* row = reinterpret_cast<uint16_t*>(block) + (static_cast<size_t>(h) * r.blockSize + off) * 2 * D;
      const float* ks = k.data + (i * r.numKvHeads + h) * D;
      const float* vs = v.data + (i * r.numKvHeads + h) * D;
      for (size_t c = 0; c < D; ++c) row[c] = f32_to_half(ks[c], r.dtype);
      for (size_t c = 0; c < D; ++c) row[D + c] = f32_to_half(vs[c], r.dtype);
    }
  }
  return a.env().Undefined();
}

Napi::Value KvAttend(const Napi::CallbackInfo& info) {
  Args a(info, "kvAttend");
  Region r = read_region(a);
  auto blockIds = a.i32("blockIds", SIZE_MAX);
  const int64_t maxTokens = static_cast<int64_t>(blockIds.size) * r.blockSize;
  const int numTokens = static_cast<int>(a.integer("numTokens", 0, std::min<int64_t>(maxTokens, 1LL << 31)));
  const size_t usedBlocks = (static_cast<size_t>(numTokens) + r.blockSize - 1) / r.blockSize;
  for (size_t i = 0; i < usedBlocks; ++i)
    if (blockIds.data[i] < 0 || blockIds.data[i] >= r.numBlocks) a.fail_range("blockIds", blockIds.data[i], 0, r.numBlocks - 1);
  auto kvHeads = a.i32("kvHeads", SIZE_MAX);
  for (size_t i = 0; i < kvHeads.size; ++i)
    if (kvHeads.data[i] < 0 || kvHeads.data[i] >= r.numKvHeads) a.fail_range("kvHeads", kvHeads.data[i], 0, r.numKvHeads - 1);
  const int G = static_cast<int>(a.integer("groupSize", 1, 256));
  const size_t D = r.headDim;
  const size_t nh = kvHeads.size;
  auto q = a.f32("q", nh * G * D);      // [nh, G, D]
  auto out = a.f32("out", nh * G * D);  // [nh, G, D]
  auto lse = a.f32("lse", nh * G);      // [nh, G]
  const double scale = a.number("scale");
  Span<int32_t> exclude;
  if (a.has("exclude")) {
    exclude = a.i32("exclude", SIZE_MAX);
    for (size_t i = 0; i < exclude.size; ++i) {
      if (exclude.data[i] < 0 || exclude.data[i] >= numTokens) a.fail_range("exclude", exclude.data[i], 0, numTokens - 1);
      if (i > 0 && exclude.data[i] <= exclude.data[i - 1])
        a.fail("exclude", "strictly increasing positions", std::to_string(exclude.data[i - 1]) + " then " + std::to_string(exclude.data[i]));
    }
  }
  AttnTask t{};
  t.region = r.base;
  t.blockBytes = r.blockBytes;
  t.blockSize = r.blockSize;
  t.headDim = r.headDim;
  t.dtype = r.dtype;
  t.blockIds = blockIds.data;
  t.numTokens = numTokens;
  t.exclude = exclude.data;
  t.numExclude = static_cast<int>(exclude.size);
  t.groupSize = G;
  t.scale = static_cast<float>(scale);
  const KernelTable& kt = active_kernels();
  for (size_t i = 0; i < nh; ++i) {
    t.kvHead = kvHeads.data[i];
    t.q = q.data + i * G * D;
    t.out = out.data + i * G * D;
    t.lse = lse.data + i * G;
    kt.attend_head(t);
  }
  return a.env().Undefined();
}

}  // namespace

void register_kv_ops(Napi::Env env, Napi::Object exports) {
  exports.Set("kvAppend", Napi::Function::New(env, KvAppend, "kvAppend"));
  exports.Set("kvAttend", Napi::Function::New(env, KvAttend, "kvAttend"));
}

}  // namespace kvoff
