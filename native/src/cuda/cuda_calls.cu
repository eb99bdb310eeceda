// Host side of the device-tier kernels: resolves handles, stages the gather's index table and launches.
// The table ([units, 2] uint32) travels through a small pool of pinned host + device slots; a slot is
// reused only once the event recorded after its kernel has completed, so no call waits for another.
#include <cuda_runtime.h>

#include <atomic>
#include <cstring>
#include <mutex>
#include <vector>

#include "cuda/cuda_api.h"
#include "cuda/cuda_device.h"
#include "cuda/cuda_internal.h"
#include "cuda/cuda_kernels.cuh"

namespace kvoff {
namespace cudadev {
namespace {

struct Slot {
  void* host = nullptr;  // pinned: the table's H2D copy is truly asynchronous
  void* dev = nullptr;
  size_t cap = 0;
  cudaEvent_t done = nullptr;  // recorded after the kernel that reads the slot
  bool busy = false;           // between acquire and that record
};

constexpr size_t kMaxSlots = 64;
std::mutex g_slot_mu;
std::vector<std::unique_ptr<Slot>> g_slots;
std::atomic<uint64_t> g_staging{0};

bool idle(Slot& s) {
  if (!s.done) return true;
  const cudaError_t e = cudaEventQuery(s.done);
  if (e == cudaSuccess) return true;
  if (e != cudaErrorNotReady) cudaGetLastError();
  return false;
}

// (Re)allocates an idle slot to hold at least `need` bytes. Only at warm-up or growth: cudaFree waits for the device.
CudaStatus grow(Slot& s, size_t need) {
  if (s.host) cudaFreeHost(s.host);
  if (s.dev) cudaFree(s.dev);
  g_staging -= s.cap;
  s.host = s.dev = nullptr;
  s.cap = 0;
  size_t cap = 4096;
  while (cap < need) cap *= 2;
  cudaError_t err = cudaHostAlloc(&s.host, cap, cudaHostAllocDefault);
  if (err != cudaSuccess) {
    s.host = nullptr;
    return failed("cudaHostAlloc of " + std::to_string(cap) + " bytes for the gather table", err);
  }
  err = cudaMalloc(&s.dev, cap);
  if (err != cudaSuccess) {
    s.dev = nullptr;
    return failed("cudaMalloc of " + std::to_string(cap) + " bytes for the gather table", err);
  }
  if (!s.done && (err = cudaEventCreateWithFlags(&s.done, cudaEventDisableTiming)) != cudaSuccess) {
    s.done = nullptr;
    return failed("cudaEventCreateWithFlags", err);
  }
  s.cap = cap;
  g_staging += cap;
  return {};
}

CudaStatus acquire(size_t need, Slot** out) {
  std::lock_guard<std::mutex> lock(g_slot_mu);
  Slot* small = nullptr;
  for (auto& s : g_slots) {
    if (s->busy || !idle(*s)) continue;
    if (s->cap >= need) {
      s->busy = true;
      *out = s.get();
      return {};
    }
    if (!small) small = s.get();
  }
  Slot* s = nullptr;
  if (g_slots.size() < kMaxSlots) {
    g_slots.push_back(std::make_unique<Slot>());
    s = g_slots.back().get();
  } else if (small) {
    s = small;
  } else {
    // Every slot is queued behind unfinished work (64 gathers in flight): wait for the oldest one.
    for (auto& c : g_slots)
      if (!c->busy) {
        s = c.get();
        break;
      }
    if (!s) return status_of(CudaFail::Runtime, "all " + std::to_string(kMaxSlots) + " index staging slots are in use by concurrent calls");
    const cudaError_t err = cudaEventSynchronize(s->done);
    if (err != cudaSuccess) return failed("cudaEventSynchronize on a gather staging slot", err);
  }
  if (s->cap < need) {
    CudaStatus st = grow(*s, need);
    if (!st.ok()) return st;
  }
  s->busy = true;
  *out = s;
  return {};
}

}  // namespace

uint64_t staging_bytes() { return g_staging.load(); }

}  // namespace cudadev

using namespace cudadev;

CudaStatus cuda_kv_gather(const GatherCall& c) {
  if (!cuda_usable()) return unavailable();
  auto d = find_arena(c.dst.handle);
  if (!d) return gone("device arena", c.dst.handle);
  auto st = find_stream(c.stream);
  if (!st) return gone("stream", c.stream);
  if (c.units == 0) return {};
  void* view = nullptr;  // the device's address of the mapped host arena (UVA may make it equal)
  cudaError_t err = cudaHostGetDevicePointer(&view, c.host->ptr, 0);
  if (err != cudaSuccess) return failed("cudaHostGetDevicePointer of the KV host arena (registered with cudaHostRegister(Mapped)?)", err);
  const size_t tableBytes = static_cast<size_t>(c.units) * 2 * sizeof(uint32_t);
  Slot* slot = nullptr;
  CudaStatus got = acquire(tableBytes, &slot);
  if (!got.ok()) return got;
  std::memcpy(slot->host, c.table, tableBytes);
  err = cudaMemcpyAsync(slot->dev, slot->host, tableBytes, cudaMemcpyHostToDevice, st->s);
  const char* what = "cudaMemcpyAsync of the gather table";
  if (err == cudaSuccess) {
    GatherParams p;
    p.src = static_cast<const uint8_t*>(view) + c.regionOffset;
    p.dst = static_cast<uint8_t*>(d->ptr) + c.dst.offset;
    p.table = static_cast<const uint2*>(slot->dev);
    p.units = c.units;
    p.rowBytes = c.rowBytes;
    p.unitBytes = c.unitRows * c.rowBytes;
    const int vec = gather_vec_bytes(reinterpret_cast<uintptr_t>(p.src), reinterpret_cast<uintptr_t>(p.dst), c.rowBytes);
    err = launch_kv_gather(p, vec, st->s);
    what = "the cudaKvGather kernel launch";
  }
  // Recorded even after a failure: the table copy may already be queued and must finish before reuse.
  const cudaError_t rec = cudaEventRecord(slot->done, st->s);
  {
    std::lock_guard<std::mutex> lock(g_slot_mu);
    slot->busy = rec != cudaSuccess;  // a slot whose event could not be recorded is retired, never reused
  }
  if (err != cudaSuccess) return failed(what, err);
  if (rec != cudaSuccess) return failed("cudaEventRecord after the gather", rec);
  hold(*st, {c.host, d});
  return {};
}

CudaStatus cuda_kv_gather_device(const GatherDeviceCall& c) {
  if (!cuda_usable()) return unavailable();
  auto bt = find_arena(c.blockTable.handle);
  if (!bt) return gone("device arena", c.blockTable.handle);
  auto pos = find_arena(c.positions.handle);
  if (!pos) return gone("device arena", c.positions.handle);
  auto d = find_arena(c.dst.handle);
  if (!d) return gone("device arena", c.dst.handle);
  auto tb = find_arena(c.table.handle);
  if (!tb) return gone("device arena", c.table.handle);
  auto st = find_stream(c.stream);
  if (!st) return gone("stream", c.stream);
  if (c.n == 0) return {};
  void* view = nullptr;
  cudaError_t err = cudaHostGetDevicePointer(&view, c.host->ptr, 0);
  if (err != cudaSuccess) return failed("cudaHostGetDevicePointer of the KV host arena (registered with cudaHostRegister(Mapped)?)", err);
  auto at = [](const std::shared_ptr<DevArena>& a, DevRef r) { return static_cast<uint8_t*>(a->ptr) + r.offset; };
  GatherTableParams tp;
  tp.positions = reinterpret_cast<const int32_t*>(at(pos, c.positions));
  tp.blockTable = reinterpret_cast<const int32_t*>(at(bt, c.blockTable));
  tp.table = reinterpret_cast<uint2*>(at(tb, c.table));
  tp.n = c.n;
  tp.ldPositions = c.ldPositions;
  tp.numKvHeads = c.numKvHeads;
  tp.blockSize = c.blockSize;
  tp.tableLen = c.tableLen;
  tp.numBlocks = c.numBlocks;
  tp.dstCapacity = c.dstCapacity;
  tp.dstSlot = c.dstSlot;
  tp.seqs = c.seqs;
  err = launch_build_gather_table(tp, st->s);
  if (err != cudaSuccess) return failed("the gather table kernel launch", err);
  GatherParams p;
  p.src = static_cast<const uint8_t*>(view) + c.regionOffset;
  p.dst = at(d, c.dst);
  p.table = tp.table;
  p.units = c.seqs * c.numKvHeads * c.n;
  p.rowBytes = c.rowBytes;
  p.unitBytes = c.rowBytes;
  err = launch_kv_gather(p, gather_vec_bytes(reinterpret_cast<uintptr_t>(p.src), reinterpret_cast<uintptr_t>(p.dst), c.rowBytes), st->s);
  if (err != cudaSuccess) return failed("the cudaKvGatherDevice kernel launch", err);
  hold(*st, {c.host, bt, pos, d, tb});
  return {};
}

CudaStatus cuda_gemv_bf16(const GemvCall& c) {
  if (!cuda_usable()) return unavailable();
  auto w = find_arena(c.w.handle);
  if (!w) return gone("device arena", c.w.handle);
  auto x = find_arena(c.x.handle);
  if (!x) return gone("device arena", c.x.handle);
  auto y = find_arena(c.y.handle);
  if (!y) return gone("device arena", c.y.handle);
  auto st = find_stream(c.stream);
  if (!st) return gone("stream", c.stream);
  const auto* wp = reinterpret_cast<const uint16_t*>(static_cast<const uint8_t*>(w->ptr) + c.w.offset);
  const auto* xp = reinterpret_cast<const float*>(static_cast<const uint8_t*>(x->ptr) + c.x.offset);
  auto* yp = reinterpret_cast<float*>(static_cast<uint8_t*>(y->ptr) + c.y.offset);
  const cudaError_t err = launch_gemv_bf16(wp, xp, yp, static_cast<int>(c.rows), static_cast<int>(c.cols), st->s);
  if (err != cudaSuccess) return failed("the cudaGemvBf16 kernel launch", err);
  hold(*st, {w, x, y});
  return {};
}

}  // namespace kvoff
