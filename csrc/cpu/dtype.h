// Storage dtypes the CPU kernels read and write; arithmetic is always fp32.
#pragma once

namespace mixkernels::cpu {

enum class Dtype : int { Float = 0, BFloat16 = 1, Half = 2 };

}  // namespace mixkernels::cpu
