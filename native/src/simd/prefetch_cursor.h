// Cache lines to prefetch, handed out one at a time from inside the attention kernel's compute loops.
#pragma once
#include <cstddef>
#include <cstdint>

namespace kvoff {
// Two streams a chunk: the chunk kPrefetchAhead tokens on, into L2, and the next chunk (already in
// L2) on into L1. Each step() of the inner loops sends one line of each, so the misses spread over
// the chunk's compute. Issued as bursts at phase boundaries they filled the core's miss queue and
// stalled it (H100 Xeon host, one thread, GQA 8, D128, shuffled blocks: 6.5-6.6 GB/s in bursts, 9.0
// stepped; memcpy 11.6-13.1).
// A loop that steps a cursor takes a local copy and hands it back when done: stepped through a reference, the
// cursor stayed in memory, and each step waited on the last one's store (Zen 3 VM, harness in L2, min ns a token:
// f16 G1 D64 14.0 -> 13.1, G8 D64 41.7 -> 40.6).
struct PrefetchCursor {
  const uint8_t* l2 = nullptr;     // next line of the chunk ahead
  const uint8_t* l2End = nullptr;
  const uint8_t* l2Begin = nullptr;
  const uint8_t* l1 = nullptr;     // next line of the next chunk
  const uint8_t* l1End = nullptr;

  void reset(const uint8_t* ahead, size_t aheadBytes, const uint8_t* soon, size_t soonBytes) {
    l2Begin = l2 = ahead;
    l2End = ahead + aheadBytes;
    l1 = soon;
    l1End = soon + soonBytes;
  }
  inline void step() {
    if (l2 < l2End) {
      __builtin_prefetch(l2, 0, 2);
      l2 += 64;
    }
    if (l1 < l1End) {
      __builtin_prefetch(l1, 0, 3);
      l1 += 64;
    }
  }
  // Sends the ahead chunk's lines up to `eighths`/8 of it that the steps have not sent yet: a floor,
  // so that a phase with few steps (small G or D) still keeps the stream going.
  inline void l2_floor(int eighths) {
    const size_t lines = static_cast<size_t>(l2End - l2Begin) / 64;
    const uint8_t* to = l2Begin + lines * eighths / 8 * 64;
    for (; l2 < to; l2 += 64) __builtin_prefetch(l2, 0, 2);
  }
  // End of the chunk: whatever is left of both streams.
  inline void flush() {
    for (; l2 < l2End; l2 += 64) __builtin_prefetch(l2, 0, 2);
    for (; l1 < l1End; l1 += 64) __builtin_prefetch(l1, 0, 3);
  }
};
}  // namespace kvoff
