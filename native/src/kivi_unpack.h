// Unpacking of KIVI code rows into floats through byte lookup tables, and an 8-way dot product;
// shared by the scoring and tail-attention kernels.
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstring>

namespace kvoff {

// Byte -> its 8/b codes as floats (low bits first, as kivi_get reads them), so a packed row
// unpacks with one table load per byte instead of a shift-and-mask per element.
struct KiviUnpackTables {
  float b1[256][8], b2[256][4], b4[256][2];
  KiviUnpackTables() {
    for (int v = 0; v < 256; ++v) {
      for (int i = 0; i < 8; ++i) b1[v][i] = static_cast<float>((v >> i) & 1);
      for (int i = 0; i < 4; ++i) b2[v][i] = static_cast<float>((v >> (2 * i)) & 3);
      for (int i = 0; i < 2; ++i) b4[v][i] = static_cast<float>((v >> (4 * i)) & 15);
    }
  }
};

inline const KiviUnpackTables& kivi_unpack_tables() {
  static const KiviUnpackTables tables;
  return tables;
}

// row [rowBytes] packed codes -> out [rowBytes * 8 / bits] codes as floats.
inline void kivi_unpack_row(const uint8_t* row, size_t rowBytes, int bits, float* out) {
  const KiviUnpackTables& t = kivi_unpack_tables();
  if (bits == 4) {
    for (size_t i = 0; i < rowBytes; ++i) std::memcpy(out + 2 * i, t.b4[row[i]], sizeof(float) * 2);
  } else if (bits == 2) {
    for (size_t i = 0; i < rowBytes; ++i) std::memcpy(out + 4 * i, t.b2[row[i]], sizeof(float) * 4);
  } else {
    for (size_t i = 0; i < rowBytes; ++i) std::memcpy(out + 8 * i, t.b1[row[i]], sizeof(float) * 8);
  }
}

// Eight independent partial sums, so the compiler vectorizes it without fast-math.
inline float kivi_dot8(const float* a, const float* b, size_t n) {
  float s[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
  size_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int k = 0; k < 8; ++k) s[k] += a[i + k] * b[i + k];
  for (; i < n; ++i) s[0] += a[i] * b[i];
  return ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
}

}  // namespace kvoff
