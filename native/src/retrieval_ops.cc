// Scoring kernels of the retrieval policies: q·k of one KV head over a paged region restricted to a subset of the
// channels (SparQ's top-r columns), and Quest's per-page upper bounds. src/kernels/retrieval.ts is their reference.
#include <algorithm>
#include <cmath>
#include <vector>

#include "args.h"
#include "half.h"
#include "ops.h"

namespace kvoff {
namespace {

// One layer's paged region: [numBlocks, numKvHeads, blockSize, 2 (K then V), headDim] of fp16/bf16.
struct ScoreRegion {
  std::shared_ptr<Arena> arena;
  const uint8_t* base;
  int numBlocks, numKvHeads, headDim, blockSize;
  KvDtype dtype;
  size_t blockBytes;
};

ScoreRegion read_score_region(const Args& a) {
  ScoreRegion r;
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

// out[g, t] = sum over the chosen channels c (in the order given) of q[g, c] * K[t, c], for tokens t in
// [0, numTokens) of one KV head. Unscaled: SparQ applies its own temperature (the share of |q| the columns carry).
// Only the chosen channels of each key are read: on a GPU system those are the bytes that cross the link.
Napi::Value KvColumnScores(const Napi::CallbackInfo& info) {
  Args a(info, "kvColumnScores");
  ScoreRegion r = read_score_region(a);
  auto blockIds = a.i32("blockIds", SIZE_MAX);
  const int64_t maxTokens = static_cast<int64_t>(blockIds.size) * r.blockSize;
  const size_t n = static_cast<size_t>(a.integer("numTokens", 0, std::min<int64_t>(maxTokens, 1LL << 31)));
  const size_t usedBlocks = (n + r.blockSize - 1) / r.blockSize;
  for (size_t i = 0; i < usedBlocks; ++i)
    if (blockIds.data[i] < 0 || blockIds.data[i] >= r.numBlocks) a.fail_range("blockIds", blockIds.data[i], 0, r.numBlocks - 1);
  const int kvHead = static_cast<int>(a.integer("kvHead", 0, r.numKvHeads - 1));
  const size_t G = static_cast<size_t>(a.integer("rows", 1, 1 << 20));  // query rows, e.g. a GQA group
  const size_t D = r.headDim;
  auto q = a.f32("q", mul_checked(a, "q", G, D));       // [rows, D]
  auto out = a.f32("out", mul_checked(a, "out", G, n));  // [rows, numTokens]
  auto c = a.i32("columns", SIZE_MAX);  // [r] distinct channels
  std::vector<bool> seen(D, false);
  for (size_t i = 0; i < c.size; ++i) {
    if (c.data[i] < 0 || static_cast<size_t>(c.data[i]) >= D) a.fail_range("columns", c.data[i], 0, static_cast<int64_t>(D) - 1);
    if (seen[c.data[i]]) a.fail("columns", "distinct channels", "channel " + std::to_string(c.data[i]) + " twice");
    seen[c.data[i]] = true;
  }
  const std::vector<int32_t> cols(c.data, c.data + c.size);
  const size_t R = cols.size();
  std::vector<float> qc(G * R);  // [rows, R]: the query's chosen channels, packed
  for (size_t g = 0; g < G; ++g)
    for (size_t j = 0; j < R; ++j) qc[g * R + j] = q.data[g * D + cols[j]];
  std::vector<float> kc(R);  // one key's chosen channels, as f32
  for (size_t t = 0; t < n; ++t) {
    const size_t block = static_cast<size_t>(blockIds.data[t / r.blockSize]);
    const size_t off = t % r.blockSize;
    const uint16_t* k = reinterpret_cast<const uint16_t*>(r.base + block * r.blockBytes) +
                        (static_cast<size_t>(kvHead) * r.blockSize + off) * 2 * D;
    for (size_t j = 0; j < R; ++j) kc[j] = half_to_f32(k[cols[j]], r.dtype);
    for (size_t g = 0; g < G; ++g) {
      const float* qg = qc.data() + g * R;
      float s = 0.f;
      for (size_t j = 0; j < R; ++j) s += qg[j] * kc[j];
      out.data[g * n + t] = s;
    }
  }
  return a.env().Undefined();
}

// Quest's upper bound of q·k over a page from its per-channel key range: sum_i max(q_i * min_i, q_i * max_i),
// taken as the max over the query heads of a GQA group (a page that may matter to any head stays a candidate).
Napi::Value PageBounds(const Napi::CallbackInfo& info) {
  Args a(info, "pageBounds");
  const size_t G = static_cast<size_t>(a.integer("queryHeads", 1, 1 << 20));
  const size_t D = static_cast<size_t>(a.integer("headDim", 1, 1 << 16));
  const size_t P = static_cast<size_t>(a.integer("numPages", 0, 1LL << 31));
  auto q = a.f32("q", mul_checked(a, "q", G, D));                                    // [G, D]
  auto meta = a.u16("meta", mul_checked(a, "meta", mul_checked(a, "meta", P, 2), D));  // [P, 2 (min, max), D] fp16
  auto out = a.f32("out", P);                                                        // [P]
  for (size_t p = 0; p < P; ++p) {
    const uint16_t* lo = meta.data + p * 2 * D;
    const uint16_t* hi = lo + D;
    float best = -INFINITY;
    for (size_t g = 0; g < G; ++g) {
      const float* qg = q.data + g * D;
      float s = 0.f;
      for (size_t i = 0; i < D; ++i) {
        if (qg[i] == 0.f) continue;  // 0 * an infinite range end would be NaN; the channel adds nothing
        s += std::max(qg[i] * f16_to_f32(lo[i]), qg[i] * f16_to_f32(hi[i]));
      }
      best = std::max(best, s);
    }
    out.data[p] = best;
  }
  return a.env().Undefined();
}

}  // namespace

void register_retrieval_ops(Napi::Env env, Napi::Object exports) {
  exports.Set("kvColumnScores", Napi::Function::New(env, KvColumnScores, "kvColumnScores"));
  exports.Set("pageBounds", Napi::Function::New(env, PageBounds, "pageBounds"));
}

}  // namespace kvoff
