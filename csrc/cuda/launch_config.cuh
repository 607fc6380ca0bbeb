// Launch configuration shared by the CUDA kernel files (torch-free).
#pragma once

#include <cstdint>

#include <cuda_runtime.h>

namespace mixkernels::gpu::launch {

constexpr int kWarpSize = 32;
// Threads per block of the elementwise, strip and mask kernels.
constexpr int kThreads = 256;
// Room for 4 resident 256-thread blocks (1024 threads) per SM caps a kernel
// at 64 registers, which the kernels fit without spills
// (tests/test_cuda_build.py checks).
constexpr int kMinBlocksPerSm = 4;

// CUDA's grid limits: kernels whose work can pass them loop over the rest.
constexpr int64_t kMaxGridX = 2147483647;  // 2^31 - 1
constexpr int64_t kMaxGridY = 65535;

constexpr int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
constexpr int64_t capped(int64_t value, int64_t limit) { return value < limit ? value : limit; }

struct LaunchConfig {
  dim3 grid;
  dim3 block;
};

// 2-D configuration of an elementwise kernel over `rows` rows of
// `row_elements` elements read `vec` at a time: blocks of `threads` threads
// shaped (threads_x covering a row's vectors, threads_y rows), grid x over
// column blocks, grid y over row blocks (capped at CUDA's limits; the kernels
// loop beyond them). A thread takes up to 4 vectors of its row while the grid
// keeps at least 8 blocks per SM, so that it loads its row's scalars once for
// several vectors.
inline LaunchConfig elementwise_config(int64_t rows, int64_t row_elements, int vec, int num_sms, int threads) {
  const int64_t vectors_per_row = ceil_div(row_elements, vec);
  int threads_x = 1;
  while (threads_x < vectors_per_row && threads_x < threads) threads_x *= 2;
  const int threads_y = threads / threads_x;

  int64_t column_blocks = ceil_div(vectors_per_row, threads_x);
  const int64_t row_blocks = ceil_div(rows, threads_y);
  const int64_t enough_blocks = static_cast<int64_t>(num_sms > 0 ? num_sms : 1) * 8;
  for (int coarsening = 1; coarsening < 4 && column_blocks > 1; coarsening *= 2) {
    const int64_t fewer = ceil_div(column_blocks, 2);
    if (fewer * row_blocks < enough_blocks) break;
    column_blocks = fewer;
  }
  LaunchConfig config;
  config.block = dim3(static_cast<unsigned>(threads_x), static_cast<unsigned>(threads_y));
  config.grid = dim3(static_cast<unsigned>(capped(column_blocks, kMaxGridX)),
                     static_cast<unsigned>(capped(row_blocks, kMaxGridY)));
  return config;
}

}  // namespace mixkernels::gpu::launch
