// Attention over the KIVI low-bit tail: the validated task and its per-ISA kernels (scalar, AVX2, AVX-512).
#pragma once
#include <cstddef>
#include <cstdint>

namespace kvoff {

// One GQA query group over tokens [0, ng * KG) of one KV head, minus `exclude`. Zero/scale are fp16 bits.
struct KiviAttnTask {
  int bits;             // 1, 2 or 4
  size_t D;             // headDim
  size_t rowBytes;      // D * bits / 8: packed bytes per token row (keys and values alike)
  size_t KG;            // tokens per key group
  size_t VG;            // channels per value group (divides D)
  size_t ng;            // key groups
  size_t G;             // query heads sharing the KV head
  float attnScale;      // softmax scale
  const float* q;               // [G, D]
  const uint8_t* kCodes;        // [ng, KG, rowBytes]
  const uint16_t* kZero;        // fp16 [ng, D]
  const uint16_t* kScale;       // fp16 [ng, D]
  const uint8_t* vCodes;        // [ng * KG, rowBytes]
  const uint16_t* vZero;        // fp16 [ng * KG, D / VG]
  const uint16_t* vScale;       // fp16 [ng * KG, D / VG]
  const int32_t* exclude;       // [nex] strictly increasing positions in [0, ng * KG)
  size_t nex;
  float* out;                   // [G, D]; zeros when nothing is attended
  float* lse;                   // [G]; -inf when nothing is attended
};

// Each writes out/lse for the task. The AVX2 kernel needs D % 8 == 0, the AVX-512 one D % 16 == 0;
// the scalar one takes any shape. Scratch comes from kernel_scratch (per thread).
void kivi_attend_scalar(const KiviAttnTask& t);
void kivi_attend_avx2(const KiviAttnTask& t);
void kivi_attend_avx512(const KiviAttnTask& t);

}  // namespace kvoff
