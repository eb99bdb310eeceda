// The table of ISA-specific kernels (scalar, AVX2, AVX-512), picked once at run time.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

#include "half.h"

namespace kvoff {

// Exact attention of one GQA query group over one KV head of a list of paged blocks.
// Host block layout: [numKvHeads, blockSize, 2 (K then V), headDim] of fp16/bf16.
struct AttnTask {
  const uint8_t* region;     // layer region: [numBlocks, blockBytes]
  size_t blockBytes;         // numKvHeads * blockSize * 2 * headDim * 2
  int blockSize;
  int headDim;
  KvDtype dtype;
  const int32_t* blockIds;   // [ceil(numTokens / blockSize)] physical ids, logical order
  int numTokens;
  const int32_t* exclude;    // [numExclude] sorted positions in [0, numTokens) to skip
  int numExclude;
  int kvHead;
  int groupSize;             // query heads sharing this KV head
  const float* q;            // [groupSize, headDim]
  float scale;               // usually 1/sqrt(headDim)
  float* out;                // [groupSize, headDim]; zeros when nothing is attended
  float* lse;                // [groupSize] natural-log sum of exp(scaled scores); -inf when empty
};

// Vector width of a table, for the kernels outside it (KIVI) that follow the active level.
enum class SimdWidth { Scalar, Avx2, Avx512 };

struct KernelTable {
  const char* name;
  void (*attend_head)(const AttnTask& task);
  SimdWidth width;
  // `rounds` rounds of independent register-only fp32 multiply-add chains at this level's width, enough chains to
  // fill every FMA pipe; returns the multiply-adds done (lanes x chains x rounds) and leaves their sum in *sink so
  // they are not optimised away. Timed by the caller (fmaRate): the arithmetic ceiling the attention kernel's
  // 2 x groupSize x headDim multiply-adds a token are held against.
  double (*fma_burst)(long rounds, float* sink);
};

// Per-thread fp32 scratch, grown on demand. Lives in the scalar TU so that no std:: template is
// instantiated inside the AVX translation units, where the linker could pick an AVX copy for all.
float* kernel_scratch(size_t floats);

const KernelTable& kernels_scalar();
const KernelTable& kernels_avx2();
const KernelTable& kernels_avx512();
// AVX-512 plus AMX tiles for bf16 attention at large GQA groups (amx::eligible); null where the compiler
// could not build it.
const KernelTable* kernels_amx();

// The table in use; set_simd("auto" | "scalar" | "avx2" | "avx512" | "amx") changes it for the whole
// process (all worker threads). Returns false if the CPU (or the OS, for AMX) lacks the asked-for level.
const KernelTable& active_kernels();
bool set_simd(const std::string& level);
bool cpu_has(const char* feature);  // "avx2", "avx512f", "f16c", "fma", "avx512bw", "avx512bf16", "amx-tile", ...
// Every level's name, narrowest first; simd_supported says which this machine runs (set_simd(level) succeeds).
inline constexpr const char* kSimdLevels[] = {"scalar", "avx2", "avx512", "amx"};
inline constexpr int kNumSimdLevels = 4;
bool simd_supported(const std::string& level);

}  // namespace kvoff
