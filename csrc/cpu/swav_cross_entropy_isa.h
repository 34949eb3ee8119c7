// Included first by the per-capability units of the SwAV cross-entropy row kernels
// (swav_cross_entropy_rows_*.cpp). Everything that ATen's vec headers pull in outside
// the at::vec::<CPU_CAPABILITY> namespace (std, c10, ATen/native/Math.h) is included
// here, before the `#pragma GCC target` of the unit, so those shared inline functions
// keep the baseline instruction set: only code in capability-named namespaces is
// compiled for AVX2/AVX-512, and a machine without them never runs it (the op picks
// the unit from at::get_cpu_capability(), which also honours ATEN_CPU_CAPABILITY).
#pragma once

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
#include <vector>

#include "swav_cross_entropy.h"

// GCC on x86-64 compiles the AVX2/AVX-512 units with `#pragma GCC target`; elsewhere
// those entry points fall back to the DEFAULT kernels.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define SEER_XENT_X86_GCC 1
#else
#define SEER_XENT_X86_GCC 0
#endif
