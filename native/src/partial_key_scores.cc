// partialKeyScores: q . k of query rows against keys stored densely as [n, dim] 16-bit rows (InfiniGen's partial
// key cache: r skewed channels per token, no V half); src/kernels/partial-key-scores.ts is its reference.
#include <vector>

#include "args.h"
#include "ops.h"

namespace kvoff {
namespace {

Napi::Value PartialKeyScores(const Napi::CallbackInfo& info) {
  Args a(info, "partialKeyScores");
  const KvDtype dtype = a.dtype("dtype");
  const size_t dim = static_cast<size_t>(a.integer("dim", 1, 4096));
  const size_t n = static_cast<size_t>(a.integer("n", 0, 1LL << 31));
  const size_t rows = static_cast<size_t>(a.integer("rows", 1, 1 << 20));
  auto keys = a.u16("keys", mul_checked(a, "keys", n, dim));  // [n, dim]
  auto q = a.f32("q", mul_checked(a, "q", rows, dim));        // [rows, dim]
  auto out = a.f32("out", mul_checked(a, "out", rows, n));    // [rows, n]

  std::vector<float> k(dim);  // one key row in f32, converted once and reused by every query row
  for (size_t t = 0; t < n; ++t) {
    const uint16_t* row = keys.data + t * dim;
    for (size_t c = 0; c < dim; ++c) k[c] = half_to_f32(row[c], dtype);
    for (size_t r = 0; r < rows; ++r) {
      const float* qr = q.data + r * dim;
      float dot = 0.f;  // fp32, channels in order: the reference sums the same way
      for (size_t c = 0; c < dim; ++c) dot += qr[c] * k[c];
      out.data[r * n + t] = dot;
    }
  }
  return a.env().Undefined();
}

}  // namespace

void register_partial_key_scores_ops(Napi::Env env, Napi::Object exports) {
  exports.Set("partialKeyScores", Napi::Function::New(env, PartialKeyScores, "partialKeyScores"));
}

}  // namespace kvoff
