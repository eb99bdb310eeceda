// Stand-in for cuda_model.cu when the addon is built without nvcc: every entry answers "CUDA not built".
#include "cuda/cuda_api.h"
