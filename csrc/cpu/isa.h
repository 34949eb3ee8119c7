// The one CPU instruction-set dispatch scheme of the extension. The extension is built for
// baseline x86-64, where at::vec::Vectorized<float> is a scalar loop and GCC vectorizes
// with SSE2 only; an op with ISA-specific code compiles its row kernels three times and
// picks one table at run time, as ATen does for its own kernels:
//
//   <op>_kernels.h          the interface: raw pointers in, a table of function pointers
//                           `Kernels`, and kernels_avx512(), kernels_avx2(), kernels_default()
//   <op>_kernels_impl.h     the kernels, written once, in namespace <op>::CPU_CAPABILITY
//   <op>_kernels_<isa>.cpp  one unit per ISA: includes <op>_kernels.h, defines SEER_ISA_AVX512,
//                           SEER_ISA_AVX2 or SEER_ISA_DEFAULT, includes this header and then
//                           <op>_kernels_impl.h, and defines kernels_<isa>()
//   <op>.cpp                tensors, checks, threading; calls select_kernels() (below) once
//
// Two parts. The first (any includer) maps at::get_cpu_capability(), which honours
// ATEN_CPU_CAPABILITY=avx512|avx2|default, to one of the three tables. The second (only
// where SEER_ISA_* is defined) compiles the rest of the unit for that ISA: it must come
// after the unit's other headers and before the kernels, since it changes how everything
// after it compiles.
//
// Only GCC on x86-64 gets the AVX2/AVX-512 target (`#pragma GCC target`); elsewhere the
// AVX2/AVX-512 units compile the portable code in their own namespaces (so they still link)
// and select_kernels() never picks them.

#ifndef SEER_KERNELS_CPU_ISA_SELECT_H_
#define SEER_KERNELS_CPU_ISA_SELECT_H_

#include <ATen/Version.h>

#include <string>

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define SEER_ISA_UNITS 1
#else
#define SEER_ISA_UNITS 0
#endif

namespace seer_kernels::cpu {

enum class Isa { kDefault, kAvx2, kAvx512 };

// The ISA whose units this process runs: ATen's own choice (the best this CPU has, or
// the lower one ATEN_CPU_CAPABILITY names), the baseline where the units are not built.
inline Isa selected_isa() {
#if SEER_ISA_UNITS
  const std::string cap = at::get_cpu_capability();
  if (cap == "AVX512") return Isa::kAvx512;
  if (cap == "AVX2") return Isa::kAvx2;
#endif
  return Isa::kDefault;
}

// The table of the selected ISA, from the op's three kernels_<isa>() getters. ATen reads
// ATEN_CPU_CAPABILITY once per process, so an op may keep the result in a static.
template <typename Table>
const Table& select_kernels(const Table& (*avx512)(), const Table& (*avx2)(),
                            const Table& (*fallback)()) {
  switch (selected_isa()) {
    case Isa::kAvx512:
      return avx512();
    case Isa::kAvx2:
      return avx2();
    default:
      return fallback();
  }
}

}  // namespace seer_kernels::cpu

#endif  // SEER_KERNELS_CPU_ISA_SELECT_H_

#if defined(SEER_ISA_AVX512) || defined(SEER_ISA_AVX2) || defined(SEER_ISA_DEFAULT)
#ifndef SEER_KERNELS_CPU_ISA_TARGET_
#define SEER_KERNELS_CPU_ISA_TARGET_

// Everything ATen's vec headers pull in outside at::vec::CPU_CAPABILITY (std, c10,
// ATen/native/Math.h), included here, before the target below, so those shared inline
// functions keep the baseline instruction set: the linker keeps one copy of each, and a
// copy compiled for AVX-512 would be the one a baseline machine runs. Only code in
// ISA-named namespaces is compiled for AVX2/AVX-512, and only a CPU that has them calls it.
#include <ATen/NumericUtils.h>
#include <ATen/native/Math.h>
#include <ATen/native/cpu/zmath.h>
#include <c10/macros/Macros.h>
#include <c10/util/BFloat16-math.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <c10/util/Load.h>
#include <c10/util/MathConstants.h>
#include <c10/util/TypeCast.h>
#include <c10/util/complex.h>
#include <c10/util/irange.h>

#include <algorithm>
#include <array>
#include <cassert>
#include <climits>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <ostream>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#if defined(SEER_ISA_DEFAULT)
#define CPU_CAPABILITY DEFAULT
#define CPU_CAPABILITY_DEFAULT
#elif !SEER_ISA_UNITS
// Not GCC on x86-64: the portable code, in the unit's own namespace.
#if defined(SEER_ISA_AVX512)
#define CPU_CAPABILITY AVX512
#else
#define CPU_CAPABILITY AVX2
#endif
#else  // GCC on x86-64: AVX2 or AVX-512 for the rest of the unit.

#if defined(SEER_ISA_AVX512)
// The feature set ATen's own AVX512 kernels are built with.
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c,bmi,bmi2,lzcnt,popcnt")
#else
#pragma GCC target("avx2,fma,f16c,bmi,bmi2,lzcnt,popcnt")
#endif

// The vector headers trip warnings that do not apply here: ABI notes for vector returns
// (every such function is inlined or internal to its unit), unknown pragmas (clang's),
// and a false maybe-uninitialized inside GCC's own intrinsics.
#pragma GCC diagnostic ignored "-Wpsabi"
#pragma GCC diagnostic ignored "-Wunknown-pragmas"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

// g++ does not define the ISA macros for a C++ `#pragma GCC target`, but ATen's vec
// headers and sleef.h select their code paths with them: define them as -m flags would.
#ifndef __AVX__
#define __AVX__ 1
#endif
#ifndef __AVX2__
#define __AVX2__ 1
#endif
#ifndef __FMA__
#define __FMA__ 1
#endif
#ifndef __F16C__
#define __F16C__ 1
#endif
#ifndef __BMI__
#define __BMI__ 1
#endif
#ifndef __BMI2__
#define __BMI2__ 1
#endif

#if defined(SEER_ISA_AVX512)
#ifndef __AVX512F__
#define __AVX512F__ 1
#endif
#ifndef __AVX512BW__
#define __AVX512BW__ 1
#endif
#ifndef __AVX512VL__
#define __AVX512VL__ 1
#endif
#ifndef __AVX512DQ__
#define __AVX512DQ__ 1
#endif
#define CPU_CAPABILITY AVX512
#define CPU_CAPABILITY_AVX512
#else
#define CPU_CAPABILITY AVX2
#define CPU_CAPABILITY_AVX2
#endif

#endif  // SEER_ISA_DEFAULT / !SEER_ISA_UNITS / GCC on x86-64
#endif  // SEER_KERNELS_CPU_ISA_TARGET_
#endif  // SEER_ISA_*
