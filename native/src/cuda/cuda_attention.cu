// CUDA attention kernels (filled in below).
#include "cuda/cuda_kernels.cuh"
