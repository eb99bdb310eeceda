// KIVI entry points: keys quantized per channel over token groups, values per token over channel
// groups, their dequantization, and approximate GQA-averaged scores q·K over quantized keys.
// Zero and scale are fp16 bit patterns (uint16), computed as kivi_params_f16 in kivi.h describes.
#include <cstring>
#include <vector>

#include "args.h"
#include "kivi.h"
#include "kivi_unpack.h"
#include "ops.h"

namespace kvoff {
namespace {

struct KiviShape {
  int bits, headDim, groupSize;
  size_t rowBytes;  // packed bytes per token row: headDim * bits / 8
};

KiviShape read_shape(const Args& a) {
  KiviShape s;
  s.bits = static_cast<int>(a.integer("bits", 1, 4));
  if (s.bits == 3) a.fail("bits", "1, 2 or 4", "3");
  s.headDim = static_cast<int>(a.integer("headDim", 1, 4096));
  if ((s.headDim * s.bits) % 8 != 0) a.fail("headDim", "a multiple of " + std::to_string(8 / s.bits) + " at " + std::to_string(s.bits) + " bits", std::to_string(s.headDim));
  s.groupSize = static_cast<int>(a.integer("groupSize", 1, 4096));
  s.rowBytes = static_cast<size_t>(s.headDim) * s.bits / 8;
  return s;
}

// src [numGroups, groupSize, D] -> codes [numGroups, groupSize, D*b/8], zero/scale fp16 [numGroups, D]
Napi::Value QuantizeKeys(const Napi::CallbackInfo& info) {
  Args a(info, "kiviQuantizeKeys");
  KiviShape s = read_shape(a);
  const size_t ng = static_cast<size_t>(a.integer("numGroups", 0, 1 << 30));
  const size_t G = s.groupSize, D = s.headDim;
  auto src = a.f32("src", mul_checked(a, "src", ng * G, D));
  auto codes = a.u8("codes", ng * G * s.rowBytes);
  auto zero = a.u16("zero", ng * D);
  auto scale = a.u16("scale", ng * D);
  for (size_t g = 0; g < ng; ++g) {
    const float* x = src.data + g * G * D;
    uint8_t* cg = codes.data + g * G * s.rowBytes;
    std::memset(cg, 0, G * s.rowBytes);
    for (size_t c = 0; c < D; ++c) {
      float mn = x[c], mx = x[c];
      for (size_t t = 1; t < G; ++t) {
        const float v = x[t * D + c];
        mn = v < mn ? v : mn;
        mx = v > mx ? v : mx;
      }
      float z, sc;
      kivi_params_f16(mn, mx, s.bits, &zero.data[g * D + c], &scale.data[g * D + c], &z, &sc);
      for (size_t t = 0; t < G; ++t) kivi_put(cg + t * s.rowBytes, static_cast<int>(c), s.bits, kivi_code(x[t * D + c], z, sc, s.bits));
    }
  }
  return a.env().Undefined();
}

Napi::Value DequantizeKeys(const Napi::CallbackInfo& info) {
  Args a(info, "kiviDequantizeKeys");
  KiviShape s = read_shape(a);
  const size_t ng = static_cast<size_t>(a.integer("numGroups", 0, 1 << 30));
  const size_t G = s.groupSize, D = s.headDim;
  auto codes = a.u8("codes", mul_checked(a, "codes", ng * G, s.rowBytes));
  auto zero = a.u16("zero", ng * D);
  auto scale = a.u16("scale", ng * D);
  auto out = a.f32("out", ng * G * D);
  std::vector<float> zf(D), sf(D);  // [D] one group's zero/scale in f32
  for (size_t g = 0; g < ng; ++g) {
    for (size_t c = 0; c < D; ++c) {
      zf[c] = f16_to_f32(zero.data[g * D + c]);
      sf[c] = f16_to_f32(scale.data[g * D + c]);
    }
    for (size_t t = 0; t < G; ++t) {
      const uint8_t* row = codes.data + (g * G + t) * s.rowBytes;
      float* o = out.data + (g * G + t) * D;
      for (size_t c = 0; c < D; ++c) o[c] = kivi_dequant(kivi_get(row, static_cast<int>(c), s.bits), zf[c], sf[c]);
    }
  }
  return a.env().Undefined();
}

// src [numTokens, D] -> codes [numTokens, D*b/8], zero/scale fp16 [numTokens, D/groupSize]
Napi::Value QuantizeValues(const Napi::CallbackInfo& info) {
  Args a(info, "kiviQuantizeValues");
  KiviShape s = read_shape(a);
  if (s.headDim % s.groupSize != 0) a.fail("groupSize", "a divisor of headDim " + std::to_string(s.headDim), std::to_string(s.groupSize));
  const size_t n = static_cast<size_t>(a.integer("numTokens", 0, 1 << 30));
  const size_t D = s.headDim, G = s.groupSize, ng = D / G;
  auto src = a.f32("src", mul_checked(a, "src", n, D));
  auto codes = a.u8("codes", n * s.rowBytes);
  auto zero = a.u16("zero", n * ng);
  auto scale = a.u16("scale", n * ng);
  for (size_t t = 0; t < n; ++t) {
    const float* x = src.data + t * D;
    uint8_t* row = codes.data + t * s.rowBytes;
    std::memset(row, 0, s.rowBytes);
    for (size_t j = 0; j < ng; ++j) {
      float mn = x[j * G], mx = x[j * G];
      for (size_t c = 1; c < G; ++c) {
        const float v = x[j * G + c];
        mn = v < mn ? v : mn;
        mx = v > mx ? v : mx;
      }
      float z, sc;
      kivi_params_f16(mn, mx, s.bits, &zero.data[t * ng + j], &scale.data[t * ng + j], &z, &sc);
      for (size_t c = 0; c < G; ++c) kivi_put(row, static_cast<int>(j * G + c), s.bits, kivi_code(x[j * G + c], z, sc, s.bits));
    }
  }
  return a.env().Undefined();
}

Napi::Value DequantizeValues(const Napi::CallbackInfo& info) {
  Args a(info, "kiviDequantizeValues");
  KiviShape s = read_shape(a);
  if (s.headDim % s.groupSize != 0) a.fail("groupSize", "a divisor of headDim " + std::to_string(s.headDim), std::to_string(s.groupSize));
  const size_t n = static_cast<size_t>(a.integer("numTokens", 0, 1 << 30));
  const size_t D = s.headDim, G = s.groupSize, ng = D / G;
  auto codes = a.u8("codes", mul_checked(a, "codes", n, s.rowBytes));
  auto zero = a.u16("zero", n * ng);
  auto scale = a.u16("scale", n * ng);
  auto out = a.f32("out", n * D);
  for (size_t t = 0; t < n; ++t) {
    const uint8_t* row = codes.data + t * s.rowBytes;
    for (size_t j = 0; j < ng; ++j) {
      const float z = f16_to_f32(zero.data[t * ng + j]), sc = f16_to_f32(scale.data[t * ng + j]);
      for (size_t c = j * G; c < (j + 1) * G; ++c) out.data[t * D + c] = kivi_dequant(kivi_get(row, static_cast<int>(c), s.bits), z, sc);
    }
  }
  return a.env().Undefined();
}

// out[t] = mean over the query heads g of q_g · dequant(K)_t, for every token of numGroups key groups.
// Uses q·(z + s·code) = q·z + (q∘s)·code, so each token costs one pass over its packed codes.
Napi::Value ScoreKeys(const Napi::CallbackInfo& info) {
  Args a(info, "kiviScoreKeys");
  KiviShape s = read_shape(a);
  const size_t ng = static_cast<size_t>(a.integer("numGroups", 0, 1 << 30));
  const int Gq = static_cast<int>(a.integer("queryHeads", 1, 256));
  const size_t G = s.groupSize, D = s.headDim;
  auto q = a.f32("q", static_cast<size_t>(Gq) * D);  // [queryHeads, D]
  auto codes = a.u8("codes", mul_checked(a, "codes", ng * G, s.rowBytes));
  auto zero = a.u16("zero", ng * D);   // fp16 [numGroups, D]
  auto scale = a.u16("scale", ng * D);  // fp16 [numGroups, D]
  auto out = a.f32("out", ng * G);  // [numGroups * groupSize]
  std::vector<float> qm(D, 0.f), w(D), cf(D);
  for (int g = 0; g < Gq; ++g)
    for (size_t c = 0; c < D; ++c) qm[c] += q.data[g * D + c];
  for (size_t c = 0; c < D; ++c) qm[c] /= static_cast<float>(Gq);
  for (size_t g = 0; g < ng; ++g) {
    float bias = 0.f;
    for (size_t c = 0; c < D; ++c) {
      bias += qm[c] * f16_to_f32(zero.data[g * D + c]);
      w[c] = qm[c] * f16_to_f32(scale.data[g * D + c]);
    }
    for (size_t t = 0; t < G; ++t) {
      kivi_unpack_row(codes.data + (g * G + t) * s.rowBytes, s.rowBytes, s.bits, cf.data());
      out.data[g * G + t] = bias + kivi_dot8(w.data(), cf.data(), D);
    }
  }
  return a.env().Undefined();
}

}  // namespace

void register_kivi_ops(Napi::Env env, Napi::Object exports) {
  exports.Set("kiviQuantizeKeys", Napi::Function::New(env, QuantizeKeys, "kiviQuantizeKeys"));
  exports.Set("kiviDequantizeKeys", Napi::Function::New(env, DequantizeKeys, "kiviDequantizeKeys"));
  exports.Set("kiviQuantizeValues", Napi::Function::New(env, QuantizeValues, "kiviQuantizeValues"));
  exports.Set("kiviDequantizeValues", Napi::Function::New(env, DequantizeValues, "kiviDequantizeValues"));
  exports.Set("kiviScoreKeys", Napi::Function::New(env, ScoreKeys, "kiviScoreKeys"));
}

}  // namespace kvoff
