// The Python module seer_kernels._C: importing it registers the operators; it also
// reports how the extension was built.
#include <torch/extension.h>

#include <string>

#ifdef SEER_KERNELS_WITH_CUDA
namespace seer_kernels::cuda {
int runtime_version_compiled();  // csrc/cuda/info.cu: proves the CUDA part is linked.
}
#endif

namespace {

std::string compiler() {
#if defined(__clang__)
  return std::string("clang ") + __clang_version__;
#elif defined(__GNUC__)
  return std::string("gcc ") + __VERSION__;
#else
  return "unknown";
#endif
}

pybind11::dict build_info() {
  pybind11::dict info;
  info["compiler"] = compiler();
  info["torch"] = TORCH_VERSION;
  info["cxx11_abi"] = static_cast<bool>(_GLIBCXX_USE_CXX11_ABI);
#ifdef _OPENMP
  info["openmp"] = true;
#else
  info["openmp"] = false;
#endif
#ifdef SEER_KERNELS_WITH_CUDA
  const int v = seer_kernels::cuda::runtime_version_compiled();
  info["cuda"] = true;
  info["cuda_version"] = std::to_string(v / 1000) + "." + std::to_string((v % 1000) / 10);
  info["cuda_archs"] = SEER_KERNELS_CUDA_ARCHS;
#else
  info["cuda"] = false;
  info["cuda_version"] = pybind11::none();
  info["cuda_archs"] = pybind11::none();
#endif
  return info;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "seer_kernels compiled kernels (CPU C++ and, when built, CUDA)";
  m.def("build_info", &build_info, "How this extension was compiled.");
}
