# Native addon: CPU kernels (scalar, AVX2 and AVX-512 translation units picked at run time),
# host arenas, and CUDA sources compiled by nvcc when it is present at install time.
{
  "variables": {
    "nvcc%": "<!(node native/find-nvcc.cjs)",
    "cuda_home%": "<!(node native/find-nvcc.cjs --home)"
  },
  "target_defaults": {
    "cflags_cc": ["-std=c++17", "-O3", "-fPIC", "-fno-strict-aliasing", "-ffp-contract=off"],
    "cflags_cc!": ["-fno-exceptions", "-std=gnu++17", "-std=gnu++20"],
    "cflags!": ["-fno-exceptions"],
    "include_dirs": ["native/src"]
  },
  "targets": [
    {
      "target_name": "kvoff_avx2",
      "type": "static_library",
      "sources": ["native/src/simd/kernels_avx2.cc", "native/src/simd/kivi_attend_avx2.cc"],
      "cflags_cc": ["-mavx2", "-mfma", "-mf16c"]
    },
    {
      "target_name": "kvoff_avx512",
      "type": "static_library",
      "sources": ["native/src/simd/kernels_avx512.cc", "native/src/simd/kivi_attend_avx512.cc"],
      "cflags_cc": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mfma", "-mf16c", "-mavx2", "-Wno-maybe-uninitialized"]
    },
    {
      "target_name": "kvoff",
      "dependencies": ["kvoff_avx2", "kvoff_avx512", "<!(node -p \"require('node-addon-api').targets\"):node_addon_api_except"],
      "sources": [
        "native/src/addon.cc",
        "native/src/args.cc",
        "native/src/arena.cc",
        "native/src/kv_ops.cc",
        "native/src/kv_gather.cc",
        "native/src/kivi_ops.cc",
        "native/src/kivi_attend.cc",
        "native/src/merge_topk_ops.cc",
        "native/src/kv_scores.cc",
        "native/src/partial_key_scores.cc",
        "native/src/host_memcpy.cc",
        "native/src/fma_rate.cc",
        "native/src/cuda_ops.cc",
        "native/src/retrieval_ops.cc",
        "native/src/cuda_args.cc",
        "native/src/cuda_device_ops.cc",
        "native/src/cuda_kernel_ops.cc",
        "native/src/cuda_model_ops.cc",
        "native/src/cuda_attention_ops.cc",
        "native/src/cuda_lowbit_ops.cc",
        "native/src/simd/kernels_scalar.cc",
        "native/src/simd/kivi_attend_scalar.cc",
        "native/src/simd/dispatch.cc"
      ],
      "conditions": [
        ["nvcc!=''", {
          "defines": ["KVOFF_WITH_CUDA=1"],
          "sources": ["native/src/cuda/cuda_probe.cu", "native/src/cuda/cuda_measure.cu", "native/src/cuda/cuda_device.cu",
                      "native/src/cuda/cuda_calls.cu", "native/src/cuda/cuda_gather.cu", "native/src/cuda/cuda_gemv.cu",
                      "native/src/cuda/cuda_model.cu", "native/src/cuda/cuda_model_gemm.cu", "native/src/cuda/cuda_sample.cu",
                      "native/src/cuda/cuda_attention.cu", "native/src/cuda/cuda_prefill_tc.cu", "native/src/cuda/cuda_lowbit.cu",
                      "native/src/cuda/cuda_lowbit_attend.cu"],
          "include_dirs": ["<(cuda_home)/include"],
          "libraries": ["-L<(cuda_home)/lib64", "-lcudart_static", "-ldl", "-lrt", "-lpthread"],
          "rules": [{
            "rule_name": "nvcc",
            "extension": "cu",
            "inputs": ["<(RULE_INPUT_PATH)"],
            "outputs": ["<(INTERMEDIATE_DIR)/<(RULE_INPUT_ROOT).o"],
            "action": ["<(nvcc)", "-Xcompiler", "-fPIC", "-O3", "-std=c++17",
                       "-gencode", "arch=compute_90,code=sm_90",
                       "-gencode", "arch=compute_90,code=compute_90",
                       "-I<(module_root_dir)/native/src", "-c", "<@(_inputs)", "-o", "<@(_outputs)"],
            "message": "nvcc <(RULE_INPUT_PATH)",
            "process_outputs_as_sources": 1
          }]
        }, {
          "sources": ["native/src/cuda/cuda_stub.cc", "native/src/cuda/cuda_model_stub.cc", "native/src/cuda/cuda_attention_stub.cc",
                      "native/src/cuda/cuda_lowbit_stub.cc"]
        }]
      ]
    }
  ]
}
