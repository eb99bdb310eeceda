// JS entry points of the device tier's kernels: cudaKvGather (zero-copy hot-set fetch from the pinned
// host KV) and cudaGemvBf16 (decode GEMV). Arguments are checked and the gather's index table is built
// here, on the calling thread; the launch itself is asynchronous on the given stream.
#include <napi.h>

#include <algorithm>
#include <vector>

#include "args.h"
#include "cuda_args.h"
#include "cuda/cuda_device.h"
#include "ops.h"

namespace kvoff {
namespace {

constexpr int64_t kMaxSafe = 9007199254740991LL;

// The fields of cudaKvGather, checked: everything but the device handles, which need a GPU.
struct GatherArgs {
  std::shared_ptr<Arena> host;
  uint64_t offset = 0;
  int numKvHeads = 0, blockSize = 0;
  uint32_t rowBytes = 0;
  int unitTokens = 1;
  size_t n = 0;
  Span<int32_t> blockIds, kvHeads, positions, slots;  // positions, slots: [nh, n]
  size_t dstCapacity = 0;                             // rows per head in dst when slots are given
  uint64_t dstRows = 0;
  DevRef dst;
  uint32_t stream = 0;
};

GatherArgs read_gather(const CudaArgs& a) {
  GatherArgs g;
  g.host = a.arena("handle");
  const int64_t numBlocks = a.integer("numBlocks", 1, 1 << 30);
  g.numKvHeads = static_cast<int>(a.integer("numKvHeads", 1, 1024));
  const int headDim = static_cast<int>(a.integer("headDim", 1, 1024));
  g.blockSize = static_cast<int>(a.integer("blockSize", 1, 1 << 30));
  a.dtype("dtype");  // the copy is dtype-blind (both are 16-bit), but the field must be valid
  g.rowBytes = static_cast<uint32_t>(headDim) * 4;  // K and V rows of one token-head: [2, headDim] 16-bit
  g.offset = static_cast<uint64_t>(a.integer("offset", 0, kMaxSafe));
  if (g.offset % 2 != 0) a.fail("offset", "an even byte offset (the region holds 16-bit values)", std::to_string(g.offset));
  const size_t regionRows = mul_checked(a, "numBlocks", static_cast<size_t>(numBlocks) * g.numKvHeads, static_cast<size_t>(g.blockSize));
  const size_t regionBytes = mul_checked(a, "numBlocks", regionRows, g.rowBytes);
  if (g.offset > g.host->bytes || regionBytes > g.host->bytes - g.offset)
    throw_error(a.env(), kErrRange, "Expected the KV region (offset " + std::to_string(g.offset) + " + " + std::to_string(regionBytes) +
                                        " bytes) to fit in arena of " + std::to_string(g.host->bytes) + " bytes but it runs past the end");
  if (regionRows > 0xffffffffULL) a.fail("numBlocks", "a region of fewer than 2^32 rows (numBlocks * numKvHeads * blockSize)", std::to_string(regionRows));

  g.blockIds = a.i32("blockIds", SIZE_MAX);
  for (size_t i = 0; i < g.blockIds.size; ++i)
    if (g.blockIds.data[i] < 0 || g.blockIds.data[i] >= numBlocks) a.fail_range("blockIds", g.blockIds.data[i], 0, numBlocks - 1);
  g.kvHeads = a.i32("kvHeads", SIZE_MAX);
  for (size_t i = 0; i < g.kvHeads.size; ++i)
    if (g.kvHeads.data[i] < 0 || g.kvHeads.data[i] >= g.numKvHeads) a.fail_range("kvHeads", g.kvHeads.data[i], 0, g.numKvHeads - 1);
  const size_t nh = g.kvHeads.size;

  g.unitTokens = static_cast<int>(a.integer_or("unitTokens", 1, std::min(g.blockSize, 1 << 20), 1));
  const int u = g.unitTokens;
  g.n = static_cast<size_t>(a.integer("n", 0, 1 << 30));
  if (g.n % u != 0) a.fail("n", "a multiple of unitTokens (" + std::to_string(u) + ")", std::to_string(g.n));
  g.positions = a.i32("positions", mul_checked(a, "positions", nh, g.n));
  const int64_t maxPos = static_cast<int64_t>(g.blockIds.size) * g.blockSize - 1;
  for (size_t i = 0; i < g.positions.size; ++i)
    if (g.positions.data[i] < 0 || g.positions.data[i] > maxPos) a.fail_range("positions", g.positions.data[i], 0, maxPos);
  // A unit is u consecutive tokens inside one block: contiguous in the host layout.
  for (size_t k = 0; k < g.positions.size; k += u) {
    const int32_t p0 = g.positions.data[k];
    if (p0 % g.blockSize + u > g.blockSize)
      a.fail("positions", "units of " + std::to_string(u) + " consecutive positions inside one block of " + std::to_string(g.blockSize),
             "a unit starting at position " + std::to_string(p0) + " (index " + std::to_string(k) + "), which crosses a block edge");
    for (int j = 1; j < u; ++j)
      if (g.positions.data[k + j] != p0 + j)
        a.fail("positions", "units of " + std::to_string(u) + " consecutive positions",
               "positions[" + std::to_string(k + j) + "] = " + std::to_string(g.positions.data[k + j]) + " after " + std::to_string(p0) + " at the unit's start");
  }

  if (a.has("dstSlots")) {
    g.dstCapacity = static_cast<size_t>(a.integer("dstCapacity", 1, 1 << 30));
    g.slots = a.i32("dstSlots", g.positions.size);
    for (size_t i = 0; i < g.slots.size; ++i)
      if (g.slots.data[i] < 0 || static_cast<size_t>(g.slots.data[i]) >= g.dstCapacity)
        a.fail_range("dstSlots", g.slots.data[i], 0, static_cast<int64_t>(g.dstCapacity) - 1);
    for (size_t k = 0; k < g.slots.size; k += u)
      for (int j = 1; j < u; ++j)
        if (g.slots.data[k + j] != g.slots.data[k] + j)
          a.fail("dstSlots", "units of " + std::to_string(u) + " consecutive slots, like positions",
                 "dstSlots[" + std::to_string(k + j) + "] = " + std::to_string(g.slots.data[k + j]) + " after " + std::to_string(g.slots.data[k]));
    // Two units landing in one slot would race on the GPU (the CPU gather lets the last win).
    std::vector<int32_t> sorted;
    for (size_t h = 0; h < nh; ++h) {
      sorted.assign(g.slots.data + h * g.n, g.slots.data + (h + 1) * g.n);
      std::sort(sorted.begin(), sorted.end());
      auto dup = std::adjacent_find(sorted.begin(), sorted.end());
      if (dup != sorted.end())
        a.fail("dstSlots", "distinct slots within each head", "slot " + std::to_string(*dup) + " twice for head index " + std::to_string(h));
    }
    g.dstRows = static_cast<uint64_t>(nh) * g.dstCapacity;
  } else {
    g.dstRows = static_cast<uint64_t>(nh) * g.n;
  }
  if (g.dstRows > 0xffffffffULL) a.fail("dst", "fewer than 2^32 destination rows", std::to_string(g.dstRows));
  // The kernel numbers 2-byte vectors in 32 bits: keep one call under 4 GiB.
  const uint64_t gathered = static_cast<uint64_t>(nh) * g.n * g.rowBytes;
  if (gathered >= (uint64_t(1) << 32)) a.fail("n", "fewer than 2^32 bytes gathered per call (split the gather)", std::to_string(gathered) + " bytes");
  g.dst = a.dev_ref("dst");
  g.stream = a.stream_handle("stream");
  return g;
}

Napi::Value CudaKvGather(const Napi::CallbackInfo& info) {
  CudaArgs a(info, "cudaKvGather");
  GatherArgs g = read_gather(a);
  a.require_gpu();
  a.require_stream("stream", g.stream);
  if (g.host->method != PinMethod::CudaHostRegister)
    a.fail("handle", "a host arena pinned and mapped by cudaHostRegister (created with pin: true while a GPU is usable)",
           std::string("an arena pinned by ") + pin_method_name(g.host->method));
  a.dev_range("dst", g.dst, g.dstRows * g.rowBytes, 2);

  // [units, 2]: first source row and first destination row of each unit, rows of rowBytes.
  const size_t nh = g.kvHeads.size, u = static_cast<size_t>(g.unitTokens), perHead = g.n / u;
  std::vector<uint32_t> table(nh * perHead * 2);
  for (size_t h = 0; h < nh; ++h) {
    const uint64_t head = static_cast<uint64_t>(g.kvHeads.data[h]);
    for (size_t i = 0; i < perHead; ++i) {
      const size_t k = h * g.n + i * u;
      const int32_t p = g.positions.data[k];
      const uint64_t block = static_cast<uint64_t>(g.blockIds.data[p / g.blockSize]);
      const uint64_t src = (block * g.numKvHeads + head) * g.blockSize + p % g.blockSize;
      const uint64_t dst = g.slots.data ? h * g.dstCapacity + static_cast<uint64_t>(g.slots.data[k]) : k;
      table[(h * perHead + i) * 2] = static_cast<uint32_t>(src);
      table[(h * perHead + i) * 2 + 1] = static_cast<uint32_t>(dst);
    }
  }
  GatherCall call;
  call.host = g.host;
  call.regionOffset = g.offset;
  call.rowBytes = g.rowBytes;
  call.unitRows = static_cast<uint32_t>(u);
  call.table = table.data();
  call.units = static_cast<uint32_t>(nh * perHead);
  call.dst = g.dst;
  call.stream = g.stream;
  a.check(cuda_kv_gather(call));
  return Napi::Number::New(a.env(), static_cast<double>(call.units));
}

// cudaKvGatherDevice: positions and block table already on the device (a top-k's output), so sizes and
// handles are checked here and the values themselves are clamped by the kernel.
Napi::Value CudaKvGatherDevice(const Napi::CallbackInfo& info) {
  CudaArgs a(info, "cudaKvGatherDevice");
  GatherDeviceCall c;
  c.host = a.arena("handle");
  c.numBlocks = static_cast<uint32_t>(a.integer("numBlocks", 1, 1 << 30));
  c.numKvHeads = static_cast<uint32_t>(a.integer("numKvHeads", 1, 1024));
  const uint32_t headDim = static_cast<uint32_t>(a.integer("headDim", 1, 1024));
  c.blockSize = static_cast<uint32_t>(a.integer("blockSize", 1, 1 << 30));
  a.dtype("dtype");
  c.rowBytes = headDim * 4;  // K and V rows of one token-head: [2, headDim] 16-bit
  c.regionOffset = static_cast<uint64_t>(a.integer("offset", 0, kMaxSafe));
  if (c.regionOffset % 2 != 0) a.fail("offset", "an even byte offset (the region holds 16-bit values)", std::to_string(c.regionOffset));
  const uint64_t regionRows = static_cast<uint64_t>(c.numBlocks) * c.numKvHeads * c.blockSize;
  if (regionRows > 0xffffffffULL) a.fail("numBlocks", "a region of fewer than 2^32 rows (numBlocks * numKvHeads * blockSize)", std::to_string(regionRows));
  const uint64_t regionBytes = regionRows * c.rowBytes;
  if (c.regionOffset > c.host->bytes || regionBytes > c.host->bytes - c.regionOffset)
    throw_error(a.env(), kErrRange, "Expected the KV region (offset " + std::to_string(c.regionOffset) + " + " + std::to_string(regionBytes) +
                                        " bytes) to fit in arena of " + std::to_string(c.host->bytes) + " bytes but it runs past the end");
  c.seqs = static_cast<uint32_t>(a.integer_or("seqs", 1, 1 << 16, 1));
  c.tableLen = static_cast<uint32_t>(a.integer("tableLen", 1, 1 << 30));
  c.n = static_cast<uint32_t>(a.integer("n", 0, 1 << 20));
  c.ldPositions = static_cast<uint32_t>(a.integer_or("ldPositions", 1, 1 << 30, std::max<uint32_t>(c.n, 1)));
  if (c.ldPositions < c.n) a.fail("ldPositions", "at least n (" + std::to_string(c.n) + ")", std::to_string(c.ldPositions));
  c.dstCapacity = static_cast<uint32_t>(a.integer("dstCapacity", 1, 1 << 30));
  c.dstSlot = static_cast<uint32_t>(a.integer_or("dstSlot", 0, 1 << 30, 0));
  if (static_cast<uint64_t>(c.dstSlot) + c.n > c.dstCapacity)
    a.fail("dstSlot", "dstSlot + n <= dstCapacity (" + std::to_string(c.dstCapacity) + ")", std::to_string(c.dstSlot) + " + " + std::to_string(c.n));
  const uint64_t heads = static_cast<uint64_t>(c.seqs) * c.numKvHeads;  // destination heads
  if (heads * c.dstCapacity > 0xffffffffULL) a.fail("dstCapacity", "fewer than 2^32 destination rows", std::to_string(c.dstCapacity));
  c.blockTable = a.dev_ref("blockTable");
  c.positions = a.dev_ref("positions");
  c.dst = a.dev_ref("dst");
  c.table = a.dev_ref("table");
  c.stream = a.stream_handle("stream");
  a.require_gpu();
  a.require_stream("stream", c.stream);
  if (c.host->method != PinMethod::CudaHostRegister)
    a.fail("handle", "a host arena pinned and mapped by cudaHostRegister (created with pin: true while a GPU is usable)",
           std::string("an arena pinned by ") + pin_method_name(c.host->method));
  a.dev_range("blockTable", c.blockTable, static_cast<uint64_t>(c.seqs) * c.tableLen * 4, 4);
  a.dev_range("positions", c.positions, ((heads - 1) * c.ldPositions + c.n) * 4, 4);
  a.dev_range("dst", c.dst, heads * c.dstCapacity * c.rowBytes, 2);
  a.dev_range("table", c.table, heads * c.n * 8, 8);
  a.check(cuda_kv_gather_device(c));
  return Napi::Number::New(a.env(), static_cast<double>(heads) * c.n);
}

bool overlaps(const DevRef& a, uint64_t aBytes, const DevRef& b, uint64_t bBytes) {
  return a.handle == b.handle && a.offset < b.offset + bBytes && b.offset < a.offset + aBytes;
}

Napi::Value CudaGemvBf16(const Napi::CallbackInfo& info) {
  CudaArgs a(info, "cudaGemvBf16");
  const int64_t rows = a.integer("rows", 1, 0x7fffffffLL);
  const int64_t cols = a.integer("cols", 1, 0x7fffffffLL);
  const DevRef w = a.dev_ref("w");  // [rows, cols] bf16
  const DevRef x = a.dev_ref("x");  // [cols] f32
  const DevRef y = a.dev_ref("y");  // [rows] f32
  const uint32_t stream = a.stream_handle("stream");
  const uint64_t wBytes = static_cast<uint64_t>(rows) * static_cast<uint64_t>(cols) * 2;
  const uint64_t xBytes = static_cast<uint64_t>(cols) * 4, yBytes = static_cast<uint64_t>(rows) * 4;
  a.require_gpu();
  a.require_stream("stream", stream);
  a.dev_range("w", w, wBytes, 2);
  a.dev_range("x", x, xBytes, 4);
  a.dev_range("y", y, yBytes, 4);
  if (overlaps(y, yBytes, w, wBytes) || overlaps(y, yBytes, x, xBytes))
    a.fail("y", "a range that overlaps neither w nor x", "an overlapping range at offset " + std::to_string(y.offset));
  GemvCall call;
  call.w = w;
  call.x = x;
  call.y = y;
  call.rows = static_cast<uint32_t>(rows);
  call.cols = static_cast<uint32_t>(cols);
  call.stream = stream;
  a.check(cuda_gemv_bf16(call));
  return a.env().Undefined();
}

}  // namespace

void register_cuda_kernel_ops(Napi::Env env, Napi::Object exports) {
  exports.Set("cudaKvGather", Napi::Function::New(env, CudaKvGather, "cudaKvGather"));
  exports.Set("cudaKvGatherDevice", Napi::Function::New(env, CudaKvGatherDevice, "cudaKvGatherDevice"));
  exports.Set("cudaGemvBf16", Napi::Function::New(env, CudaGemvBf16, "cudaGemvBf16"));
}

}  // namespace kvoff
