// fmaRate: one thread's fp32 multiply-adds a second at the active SIMD level, the arithmetic yardstick beside
// hostMemcpyBandwidth's memory one (attention does 2 x groupSize x headDim multiply-adds a token of K+V read).
#include <napi.h>

#include <algorithm>
#include <chrono>

#include "args.h"
#include "ops.h"
#include "simd/kernels.h"

namespace kvoff {
namespace {

// The level's register-only chains (KernelTable::fma_burst), timed here because std::chrono must not be
// instantiated inside the ISA translation units. Bursts double until one takes a tenth of `seconds`; the best
// rate of those that fill the time is returned (the others ran while the clock ramped up).
Napi::Value FmaRate(const Napi::CallbackInfo& info) {
  Args a(info, "fmaRate");
  const double seconds = a.has("seconds") ? a.number("seconds") : 0.2;
  if (!(seconds > 0 && seconds <= 10))
    a.fail("seconds", "a number of seconds in (0, 10]", describe_value(info[0].As<Napi::Object>().Get("seconds")));
  const KernelTable& t = active_kernels();
  using Clock = std::chrono::steady_clock;
  float sink = 0.f;
  long rounds = 1024;
  double best = 0, spent = 0;
  while (spent < seconds) {
    const Clock::time_point t0 = Clock::now();
    const double fmas = t.fma_burst(rounds, &sink);
    const double s = std::chrono::duration<double>(Clock::now() - t0).count();
    spent += s;
    if (s < seconds / 10) rounds *= 2;
    else best = std::max(best, fmas / s);
  }
  Napi::Object o = Napi::Object::New(a.env());
  o.Set("level", Napi::String::New(a.env(), t.name));
  o.Set("fmaPerSecond", Napi::Number::New(a.env(), best));
  o.Set("checksum", Napi::Number::New(a.env(), sink));  // the chains' sum: keeps them from being optimised away
  return o;
}

}  // namespace

void register_fma_rate_ops(Napi::Env env, Napi::Object exports) {
  exports.Set("fmaRate", Napi::Function::New(env, FmaRate, "fmaRate"));
}

}  // namespace kvoff
