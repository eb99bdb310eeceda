// kvScores: raw scaled attention scores (scale * q . k) of query rows against one KV head's keys over a block
// list, what eviction policies (h2o, tova, snapkv, ...) rank tokens by; src/kernels/kv-scores.ts is its reference.
#include <algorithm>
#include <vector>

#include "args.h"
#include "ops.h"

namespace kvoff {
namespace {

Napi::Value KvScores(const Napi::CallbackInfo& info) {
  Args a(info, "kvScores");
  // The layer region: [numBlocks, numKvHeads, blockSize, 2 (K then V), headDim] of fp16/bf16.
  auto arena = a.arena("handle");
  const int numBlocks = static_cast<int>(a.integer("numBlocks", 1, 1 << 30));
  const int numKvHeads = static_cast<int>(a.integer("numKvHeads", 1, 1024));
  const int headDim = static_cast<int>(a.integer("headDim", 1, 1024));
  const int blockSize = static_cast<int>(a.integer("blockSize", 1, 1 << 30));
  const KvDtype dtype = a.dtype("dtype");
  const size_t blockBytes = static_cast<size_t>(numKvHeads) * blockSize * 2 * headDim * 2;
  const size_t offset = static_cast<size_t>(a.integer("offset", 0, 9007199254740991LL));
  const size_t regionBytes = mul_checked(a, "numBlocks", blockBytes, static_cast<size_t>(numBlocks));
  if (offset > arena->bytes || regionBytes > arena->bytes - offset)
    throw_error(a.env(), kErrRange, "Expected the KV region (offset " + std::to_string(offset) + " + " + std::to_string(regionBytes) +
                                        " bytes) to fit in arena of " + std::to_string(arena->bytes) + " bytes but it runs past the end");
  const uint8_t* base = arena->ptr + offset;

  auto blockIds = a.i32("blockIds", SIZE_MAX);
  const int64_t maxTokens = static_cast<int64_t>(blockIds.size) * blockSize;
  const int numTokens = static_cast<int>(a.integer("numTokens", 0, std::min<int64_t>(maxTokens, 1LL << 31)));
  const size_t usedBlocks = (static_cast<size_t>(numTokens) + blockSize - 1) / blockSize;
  for (size_t i = 0; i < usedBlocks; ++i)
    if (blockIds.data[i] < 0 || blockIds.data[i] >= numBlocks) a.fail_range("blockIds", blockIds.data[i], 0, numBlocks - 1);
  const int kvHead = static_cast<int>(a.integer("kvHead", 0, numKvHeads - 1));
  const size_t rows = static_cast<size_t>(a.integer("rows", 1, 1 << 20));
  const size_t D = headDim;
  auto q = a.f32("q", mul_checked(a, "q", rows, D));                                  // [rows, D]
  auto out = a.f32("out", mul_checked(a, "out", rows, static_cast<size_t>(numTokens)));  // [rows, numTokens]
  const float scale = static_cast<float>(a.number("scale"));

  std::vector<float> k(D);  // one key row in f32, converted once and reused by every query row
  for (int p = 0; p < numTokens; ++p) {
    const uint8_t* block = base + static_cast<size_t>(blockIds.data[p / blockSize]) * blockBytes;
    const uint16_t* row = reinterpret_cast<const uint16_t*>(block) + (static_cast<size_t>(kvHead) * blockSize + p % blockSize) * 2 * D;
    for (size_t c = 0; c < D; ++c) k[c] = half_to_f32(row[c], dtype);
    for (size_t r = 0; r < rows; ++r) {
      const float* qr = q.data + r * D;
      float dot = 0.f;  // fp32, channels in order: the reference sums the same way
      for (size_t c = 0; c < D; ++c) dot += qr[c] * k[c];
      out.data[r * static_cast<size_t>(numTokens) + p] = dot * scale;
    }
  }
  return a.env().Undefined();
}

}  // namespace

void register_kv_scores_ops(Napi::Env env, Napi::Object exports) {
  exports.Set("kvScores", Napi::Function::New(env, KvScores, "kvScores"));
}

}  // namespace kvoff
