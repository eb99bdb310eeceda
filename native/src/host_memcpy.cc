// hostMemcpyBandwidth: aggregate libc memcpy GB/s of N native threads copying private slices at once,
// the host-side yardstick (DESIGN §7) that CPU attention and gathers are compared against.
#include <napi.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <system_error>
#include <thread>
#include <vector>

#include "args.h"
#include "ops.h"

namespace kvoff {
namespace {

using Clock = std::chrono::steady_clock;

// A reusable barrier (C++17 has no std::barrier): every rep starts with all threads released together.
class Barrier {
 public:
  explicit Barrier(int n) : n_(n) {}
  void wait() {
    std::unique_lock<std::mutex> lock(mu_);
    const long gen = gen_;
    if (++arrived_ == n_) {
      arrived_ = 0;
      gen_++;
      cv_.notify_all();
      return;
    }
    cv_.wait(lock, [&] { return gen_ != gen; });
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  int n_;
  int arrived_ = 0;
  long gen_ = 0;
};

struct MemcpyJob {
  size_t slice = 0;  // bytes per thread per rep
  int threads = 1;
  int iterations = 1;
  double bestMs = 0;
  std::string error;

  void run() {
    Barrier barrier(threads);
    std::vector<Clock::time_point> start(static_cast<size_t>(iterations) * threads), end(start.size());
    std::vector<char> failed(threads, 0);
    // A start gate: if the OS refuses a thread, the ones already started must not wait at the barrier forever.
    std::mutex gateMu;
    std::condition_variable gateCv;
    bool go = false, abort = false;
    auto body = [&](int rank) {
      {
        std::unique_lock<std::mutex> lock(gateMu);
        gateCv.wait(lock, [&] { return go; });
        if (abort) return;
      }
      // Each thread allocates and first-touches its own slices, so on NUMA hosts they sit on its node.
      const size_t mapped = (slice + 4095) / 4096 * 4096;
      auto* src = static_cast<unsigned char*>(std::aligned_alloc(4096, mapped));
      auto* dst = static_cast<unsigned char*>(std::aligned_alloc(4096, mapped));
      if (src && dst) {
        std::memset(src, 1, mapped);
        std::memset(dst, 0, mapped);
      } else {
        failed[rank] = 1;
      }
      barrier.wait();  // after this every thread sees every failed[] flag
      const bool anyFailed = std::find(failed.begin(), failed.end(), 1) != failed.end();
      // Rep -1 is an untimed warm-up; all threads take the same path so the barrier counts stay equal.
      for (int it = anyFailed ? iterations : -1; it < iterations; it++) {
        barrier.wait();
        const Clock::time_point t0 = Clock::now();
        std::memcpy(dst, src, slice);
        // Keeps the compiler from dropping a copy into memory that is freed unread.
        __asm__ __volatile__("" : : "r"(dst) : "memory");
        const Clock::time_point t1 = Clock::now();
        if (it >= 0) {
          start[static_cast<size_t>(it) * threads + rank] = t0;
          end[static_cast<size_t>(it) * threads + rank] = t1;
        }
      }
      std::free(src);
      std::free(dst);
    };
    std::vector<std::thread> team;
    try {
      for (int r = 1; r < threads; r++) team.emplace_back(body, r);
    } catch (const std::system_error& e) {
      error = "Expected to start " + std::to_string(threads) + " threads for hostMemcpyBandwidth but the OS refused: " + e.what();
    }
    {
      std::lock_guard<std::mutex> lock(gateMu);
      go = true;
      abort = !error.empty();
    }
    gateCv.notify_all();
    if (error.empty()) body(0);  // this (libuv pool) thread is rank 0
    for (auto& t : team) t.join();
    if (!error.empty()) return;
    if (std::find(failed.begin(), failed.end(), 1) != failed.end()) {
      error = "Expected to allocate 2 x " + std::to_string(slice) + " bytes per thread for hostMemcpyBandwidth but the OS refused (out of memory)";
      return;
    }
    double best = 1e300;
    for (int it = 0; it < iterations; it++) {
      auto s = start.begin() + static_cast<long>(it) * threads, e = end.begin() + static_cast<long>(it) * threads;
      // The rep lasts from the first thread's start to the last thread's end: all of them copying together.
      const auto span = *std::max_element(e, e + threads) - *std::min_element(s, s + threads);
      best = std::min(best, std::chrono::duration<double, std::milli>(span).count());
    }
    bestMs = best;
  }
};

class MemcpyWorker : public Napi::AsyncWorker {
 public:
  MemcpyWorker(Napi::Env env, MemcpyJob job)
      : Napi::AsyncWorker(env, "kvoff.hostMemcpyBandwidth"), job_(std::move(job)), deferred_(Napi::Promise::Deferred::New(env)) {}
  Napi::Promise promise() { return deferred_.Promise(); }
  void Execute() override {
    job_.run();
    if (!job_.error.empty()) SetError(job_.error);
  }
  void OnOK() override {
    Napi::Env env = Env();
    const double bytes = static_cast<double>(job_.slice) * job_.threads;
    Napi::Object o = Napi::Object::New(env);
    o.Set("bytes", Napi::Number::New(env, bytes));
    o.Set("threads", Napi::Number::New(env, job_.threads));
    o.Set("iterations", Napi::Number::New(env, job_.iterations));
    o.Set("bestMs", Napi::Number::New(env, job_.bestMs));
    o.Set("gbPerS", Napi::Number::New(env, bytes / (job_.bestMs * 1e6)));
    deferred_.Resolve(o);
  }
  void OnError(const Napi::Error& e) override {
    e.Set("code", Napi::String::New(Env(), kErrCapacity));
    deferred_.Reject(e.Value());
  }

 private:
  MemcpyJob job_;
  Napi::Promise::Deferred deferred_;
};

Napi::Value HostMemcpyBandwidth(const Napi::CallbackInfo& info) {
  Args a(info, "hostMemcpyBandwidth");
  MemcpyJob job;
  job.threads = static_cast<int>(a.integer("threads", 1, 1024));
  // At least one page per thread; at most 1 TiB, far past any host's memory, to catch unit mistakes.
  const int64_t bytes = a.integer("bytes", int64_t(4096) * job.threads, int64_t(1) << 40);
  job.iterations = static_cast<int>(a.integer_or("iterations", 1, 1000, 5));
  job.slice = static_cast<size_t>(bytes / job.threads) / 64 * 64;  // cache-line multiple: no split lines between threads
  auto* w = new MemcpyWorker(a.env(), std::move(job));
  Napi::Promise p = w->promise();
  w->Queue();
  return p;
}

}  // namespace

void register_host_memcpy_ops(Napi::Env env, Napi::Object exports) {
  exports.Set("hostMemcpyBandwidth", Napi::Function::New(env, HostMemcpyBandwidth, "hostMemcpyBandwidth"));
}

}  // namespace kvoff
