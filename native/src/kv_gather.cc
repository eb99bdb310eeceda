// Gather of scattered (token, head) rows of the paged host KV into a compact buffer: the hot-set
// fetch. K and V of a token-head are one unit (2 * headDim 16-bit values); consecutive tokens of a
// head inside one block are copied as one run, never one copy per row when a run is longer.
// kvGatherAsync runs the same copy on the libuv thread pool (the CPU backend's copy thread), so
// it overlaps with compute on the main thread and in the attention workers.
#include <cstring>
#include <memory>
#include <vector>

#include "args.h"
#include "ops.h"

namespace kvoff {
namespace {

struct GatherJob {
  std::shared_ptr<Arena> src, dstArena;  // keep both alive while the copy runs
  const uint8_t* region = nullptr;       // [numBlocks, numKvHeads, blockSize, 2, headDim]
  size_t blockBytes = 0, rowBytes = 0;
  int blockSize = 0;
  std::vector<int32_t> blockIds;   // [numLogicalBlocks]
  std::vector<int32_t> positions;  // [nh, n] logical token positions, per head
  std::vector<int32_t> kvHeads;    // [nh]
  size_t n = 0;
  std::vector<int32_t> dstSlots;   // [nh, n] optional: unit i of head h lands in slot dstSlots[h*n+i]
  size_t dstCapacity = 0;          // slots per head when dstSlots is given
  uint8_t* dst = nullptr;          // [nh, n, 2, headDim], or [nh, dstCapacity, 2, headDim] with dstSlots
  size_t runs = 0;                 // memcpy calls made (for stats and tests)

  void run() {
    runs = 0;
    for (size_t h = 0; h < kvHeads.size(); ++h) {
      const int32_t* pos = positions.data() + h * n;
      const int32_t* slot = dstSlots.empty() ? nullptr : dstSlots.data() + h * n;
      uint8_t* out = dst + h * (slot ? dstCapacity : n) * rowBytes;
      size_t i = 0;
      while (i < n) {
        const int p = pos[i];
        const int off = p % blockSize;
        size_t len = 1;  // extend while the next position follows in the same block (and the next slot follows)
        while (i + len < n && pos[i + len] == p + static_cast<int>(len) && off + static_cast<int>(len) < blockSize &&
               (!slot || slot[i + len] == slot[i] + static_cast<int>(len)))
          ++len;
        const size_t at = slot ? static_cast<size_t>(slot[i]) : i;
        const uint8_t* from = region + static_cast<size_t>(blockIds[p / blockSize]) * blockBytes +
                              (static_cast<size_t>(kvHeads[h]) * blockSize + off) * rowBytes;
        std::memcpy(out + at * rowBytes, from, len * rowBytes);
        ++runs;
        i += len;
      }
    }
  }
};

// Reads and checks every argument on the JS thread; the job then touches no JS value.
std::unique_ptr<GatherJob> read_job(const Args& a) {
  auto job = std::make_unique<GatherJob>();
  job->src = a.arena("handle");
  const int numBlocks = static_cast<int>(a.integer("numBlocks", 1, 1 << 30));
  const int numKvHeads = static_cast<int>(a.integer("numKvHeads", 1, 1024));
  const int headDim = static_cast<int>(a.integer("headDim", 1, 1024));
  job->blockSize = static_cast<int>(a.integer("blockSize", 1, 1 << 30));
  a.dtype("dtype");  // both dtypes are 16-bit: the copy is dtype-blind, but the field must be valid
  job->rowBytes = static_cast<size_t>(2) * headDim * 2;
  job->blockBytes = static_cast<size_t>(numKvHeads) * job->blockSize * job->rowBytes;
  const size_t offset = static_cast<size_t>(a.integer("offset", 0, 9007199254740991LL));
  const size_t regionBytes = mul_checked(a, "numBlocks", job->blockBytes, static_cast<size_t>(numBlocks));
  if (offset > job->src->bytes || regionBytes > job->src->bytes - offset)
    throw_error(a.env(), kErrRange, "Expected the KV region (offset " + std::to_string(offset) + " + " + std::to_string(regionBytes) +
                                        " bytes) to fit in arena of " + std::to_string(job->src->bytes) + " bytes but it runs past the end");
  job->region = job->src->ptr + offset;
  auto blockIds = a.i32("blockIds", SIZE_MAX);
  for (size_t i = 0; i < blockIds.size; ++i)
    if (blockIds.data[i] < 0 || blockIds.data[i] >= numBlocks) a.fail_range("blockIds", blockIds.data[i], 0, numBlocks - 1);
  job->blockIds.assign(blockIds.data, blockIds.data + blockIds.size);
  auto kvHeads = a.i32("kvHeads", SIZE_MAX);
  for (size_t i = 0; i < kvHeads.size; ++i)
    if (kvHeads.data[i] < 0 || kvHeads.data[i] >= numKvHeads) a.fail_range("kvHeads", kvHeads.data[i], 0, numKvHeads - 1);
  job->kvHeads.assign(kvHeads.data, kvHeads.data + kvHeads.size);
  job->n = static_cast<size_t>(a.integer("n", 0, 1 << 30));
  auto positions = a.i32("positions", mul_checked(a, "positions", kvHeads.size, job->n));  // [nh, n]
  const int64_t maxPos = static_cast<int64_t>(blockIds.size) * job->blockSize - 1;
  for (size_t i = 0; i < positions.size; ++i)
    if (positions.data[i] < 0 || positions.data[i] > maxPos) a.fail_range("positions", positions.data[i], 0, maxPos);
  job->positions.assign(positions.data, positions.data + positions.size);
  size_t units = kvHeads.size * job->n;
  if (a.has("dstSlots")) {
    job->dstCapacity = static_cast<size_t>(a.integer("dstCapacity", 1, 1 << 30));
    auto slots = a.i32("dstSlots", positions.size);  // [nh, n]
    for (size_t i = 0; i < slots.size; ++i)
      if (slots.data[i] < 0 || static_cast<size_t>(slots.data[i]) >= job->dstCapacity)
        a.fail_range("dstSlots", slots.data[i], 0, static_cast<int64_t>(job->dstCapacity) - 1);
    job->dstSlots.assign(slots.data, slots.data + slots.size);
    units = kvHeads.size * job->dstCapacity;
  }
  auto dst = a.u16("dst", mul_checked(a, "dst", units, job->rowBytes / 2));  // [nh, n or dstCapacity, 2, headDim]
  job->dst = reinterpret_cast<uint8_t*>(dst.data);
  job->dstArena = dst.keep;
  return job;
}

Napi::Value KvGather(const Napi::CallbackInfo& info) {
  Args a(info, "kvGather");
  auto job = read_job(a);
  job->run();
  return Napi::Number::New(a.env(), static_cast<double>(job->runs));
}

class GatherWorker : public Napi::AsyncWorker {
 public:
  GatherWorker(Napi::Env env, std::unique_ptr<GatherJob> job, Napi::Value dstValue)
      : Napi::AsyncWorker(env, "kvoff.kvGatherAsync"), job_(std::move(job)), deferred_(Napi::Promise::Deferred::New(env)) {
    // A typed-array destination must outlive the copy: hold a reference until it completes. (Transferring
    // its buffer away meanwhile is the caller's error; arena references avoid the question.)
    if (dstValue.IsTypedArray()) dstRef_ = Napi::Persistent(dstValue.As<Napi::Object>());
  }
  Napi::Promise promise() { return deferred_.Promise(); }
  void Execute() override { job_->run(); }
  void OnOK() override { deferred_.Resolve(Napi::Number::New(Env(), static_cast<double>(job_->runs))); }
  void OnError(const Napi::Error& e) override { deferred_.Reject(e.Value()); }

 private:
  std::unique_ptr<GatherJob> job_;
  Napi::Promise::Deferred deferred_;
  Napi::ObjectReference dstRef_;
};

Napi::Value KvGatherAsync(const Napi::CallbackInfo& info) {
  Args a(info, "kvGatherAsync");
  auto job = read_job(a);
  auto* w = new GatherWorker(a.env(), std::move(job), info[0].As<Napi::Object>().Get("dst"));
  Napi::Promise p = w->promise();
  w->Queue();
  return p;
}

}  // namespace

void register_kv_gather_ops(Napi::Env env, Napi::Object exports) {
  exports.Set("kvGather", Napi::Function::New(env, KvGather, "kvGather"));
  exports.Set("kvGatherAsync", Napi::Function::New(env, KvGatherAsync, "kvGatherAsync"));
}

}  // namespace kvoff
