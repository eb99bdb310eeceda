// Scalar stand-ins for the AMX tile intrinsics, so the AMX attention code can be checked on a CPU without tiles.
// Only check builds define KVOFF_AMX_EMULATE (the attention harness with XF=-DKVOFF_AMX_EMULATE, and
// bench/native/amx-check.sh); the addon's own build never does. Included by attention_amx.h after <immintrin.h>,
// whose tile macros it replaces. Plain fp32 arithmetic: the tile unit's own rounding and its flushing of
// subnormal inputs are not modelled.
#pragma once
#include <cstdint>
#include <cstring>

namespace amx_emu {
struct Tile {
  int rows = 0, colsb = 0;
  alignas(64) uint8_t data[16][64];
};
inline thread_local Tile tiles[8];

inline float bf16(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  const uint32_t bits = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}
// The config layout of amx::TileConfig: palette, start row, 14 reserved bytes, colsb[16], rows[16].
inline void loadconfig(const void* cfg) {
  const uint8_t* c = static_cast<const uint8_t*>(cfg);
  for (int t = 0; t < 8; ++t) {
    uint16_t colsb;
    std::memcpy(&colsb, c + 16 + 2 * t, 2);
    tiles[t].colsb = colsb;
    tiles[t].rows = c[48 + t];
  }
}
inline void loadd(int t, const void* base, long stride) {
  for (int r = 0; r < tiles[t].rows; ++r) std::memcpy(tiles[t].data[r], static_cast<const uint8_t*>(base) + r * stride, tiles[t].colsb);
}
inline void stored(int t, void* base, long stride) {
  for (int r = 0; r < tiles[t].rows; ++r) std::memcpy(static_cast<uint8_t*>(base) + r * stride, tiles[t].data[r], tiles[t].colsb);
}
inline void zero(int t) { std::memset(tiles[t].data, 0, sizeof tiles[t].data); }
// C [M, N] fp32 += A [M, K pairs of bf16] x B [K rows, N pairs of bf16], each pair's two products summed first.
inline void dpbf16ps(int c, int a, int b) {
  Tile &C = tiles[c], &A = tiles[a], &B = tiles[b];
  for (int m = 0; m < C.rows; ++m)
    for (int n = 0; n < C.colsb / 4; ++n) {
      float acc;
      std::memcpy(&acc, C.data[m] + 4 * n, 4);
      for (int k = 0; k < A.colsb / 4; ++k)
        acc += bf16(A.data[m] + 4 * k) * bf16(B.data[k] + 4 * n) + bf16(A.data[m] + 4 * k + 2) * bf16(B.data[k] + 4 * n + 2);
      std::memcpy(C.data[m] + 4 * n, &acc, 4);
    }
}
}  // namespace amx_emu

#undef _tile_loadd
#undef _tile_stored
#undef _tile_zero
#undef _tile_dpbf16ps
#define _tile_loadconfig(cfg) amx_emu::loadconfig(cfg)
#define _tile_release() ((void)0)
#ifdef KVOFF_AMX_EMULATE_NOTHING  // and -DKVOFF_AMX_EMULATE_NOTHING: tile work left out, to time the rest of the path
#define _tile_loadd(t, base, stride) ((void)(base))
#define _tile_stored(t, base, stride) ((void)(base))
#define _tile_zero(t) ((void)0)
#define _tile_dpbf16ps(c, a, b) ((void)0)
#else
#define _tile_loadd(t, base, stride) amx_emu::loadd(t, base, stride)
#define _tile_stored(t, base, stride) amx_emu::stored(t, base, stride)
#define _tile_zero(t) amx_emu::zero(t)
#define _tile_dpbf16ps(c, a, b) amx_emu::dpbf16ps(c, a, b)
#endif
