#include <cuda_runtime_api.h>

namespace seer_kernels::cuda {

// CUDART_VERSION as seen by nvcc when this file was compiled (e.g. 13000 for 13.0).
int runtime_version_compiled() { return CUDART_VERSION; }

}  // namespace seer_kernels::cuda
