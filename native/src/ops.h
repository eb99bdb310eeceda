// Registration of the native entry points, grouped by file.
#pragma once
#include <napi.h>

namespace kvoff {
void register_arena_ops(Napi::Env env, Napi::Object exports);
void register_kv_ops(Napi::Env env, Napi::Object exports);
void register_kv_gather_ops(Napi::Env env, Napi::Object exports);
void register_kivi_ops(Napi::Env env, Napi::Object exports);
void register_kivi_attend_ops(Napi::Env env, Napi::Object exports);
void register_merge_topk_ops(Napi::Env env, Napi::Object exports);
void register_host_memcpy_ops(Napi::Env env, Napi::Object exports);
void register_fma_rate_ops(Napi::Env env, Napi::Object exports);
void register_cuda_ops(Napi::Env env, Napi::Object exports);
void register_retrieval_ops(Napi::Env env, Napi::Object exports);
void register_kv_scores_ops(Napi::Env env, Napi::Object exports);
void register_cuda_device_ops(Napi::Env env, Napi::Object exports);
void register_cuda_kernel_ops(Napi::Env env, Napi::Object exports);
void register_cuda_model_ops(Napi::Env env, Napi::Object exports);
void register_cuda_attention_ops(Napi::Env env, Napi::Object exports);
void register_cuda_lowbit_ops(Napi::Env env, Napi::Object exports);
void register_partial_key_scores_ops(Napi::Env env, Napi::Object exports);
}  // namespace kvoff
