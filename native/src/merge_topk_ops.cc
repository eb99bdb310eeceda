// LSE merge of two attention partials over disjoint token sets, and top-k selection per row.
#include <algorithm>
#include <cmath>
#include <vector>

#include "args.h"
#include "ops.h"

namespace kvoff {
namespace {

// m = max(a, b); o = (e^(a-m) oA + e^(b-m) oB) / (e^(a-m) + e^(b-m)); lse = m + log(sum).
// `out` may be `oA` or `oB` (each element is read before it is written).
Napi::Value LseMerge(const Napi::CallbackInfo& info) {
  Args a(info, "lseMerge");
  const size_t rows = static_cast<size_t>(a.integer("rows", 0, 1 << 30));
  const size_t D = static_cast<size_t>(a.integer("headDim", 1, 1 << 16));
  auto oA = a.f32("oA", mul_checked(a, "oA", rows, D));  // [rows, D]
  auto lA = a.f32("lseA", rows);                         // [rows]
  auto oB = a.f32("oB", rows * D);
  auto lB = a.f32("lseB", rows);
  auto out = a.f32("out", rows * D);
  auto lO = a.f32("lseOut", rows);
  for (size_t r = 0; r < rows; ++r) {
    const float la = lA.data[r], lb = lB.data[r];
    const float m = la > lb ? la : lb;
    float* o = out.data + r * D;
    const float* xa = oA.data + r * D;
    const float* xb = oB.data + r * D;
    if (m == -INFINITY) {  // both sets empty
      for (size_t i = 0; i < D; ++i) o[i] = 0.f;
      lO.data[r] = -INFINITY;
      continue;
    }
    const float wa = la == -INFINITY ? 0.f : std::exp(la - m);
    const float wb = lb == -INFINITY ? 0.f : std::exp(lb - m);
    const float sum = wa + wb, inv = 1.f / sum;
    for (size_t i = 0; i < D; ++i) o[i] = (wa * xa[i] + wb * xb[i]) * inv;
    lO.data[r] = m + std::log(sum);
  }
  return a.env().Undefined();
}

// Indices of the k largest scores per row, best first; ties go to the lower index, NaN ranks last.
Napi::Value TopK(const Napi::CallbackInfo& info) {
  Args a(info, "topK");
  const size_t rows = static_cast<size_t>(a.integer("rows", 0, 1 << 30));
  const size_t n = static_cast<size_t>(a.integer("n", 0, 1 << 30));
  const size_t k = static_cast<size_t>(a.integer("k", 0, static_cast<int64_t>(n)));
  auto scores = a.f32("scores", mul_checked(a, "scores", rows, n));  // [rows, n]
  auto out = a.i32("out", rows * k);                                 // [rows, k]
  std::vector<int32_t> idx(n);
  for (size_t r = 0; r < rows; ++r) {
    const float* s = scores.data + r * n;
    auto better = [s](int32_t x, int32_t y) {
      const bool nx = std::isnan(s[x]), ny = std::isnan(s[y]);
      if (nx != ny) return ny;
      if (!nx && s[x] != s[y]) return s[x] > s[y];
      return x < y;
    };
    for (size_t i = 0; i < n; ++i) idx[i] = static_cast<int32_t>(i);
    if (k < n && k > 0) std::nth_element(idx.begin(), idx.begin() + (k - 1), idx.end(), better);
    std::sort(idx.begin(), idx.begin() + k, better);
    std::copy(idx.begin(), idx.begin() + k, out.data + r * k);
  }
  return a.env().Undefined();
}

}  // namespace

void register_merge_topk_ops(Napi::Env env, Napi::Object exports) {
  exports.Set("lseMerge", Napi::Function::New(env, LseMerge, "lseMerge"));
  exports.Set("topK", Napi::Function::New(env, TopK, "topK"));
}

}  // namespace kvoff
