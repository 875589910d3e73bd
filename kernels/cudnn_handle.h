// A cuDNN handle for one stream, made on first use (kernels/attention.cu, kernels/conv_cudnn.cu).
// Include only where MOGAGEN_HAVE_CUDNN is defined.
#pragma once
#include <cudnn.h>

#include <string>
#include <utility>

#include "kernels/kernels.cuh"

namespace mg {
namespace cuda {

class LazyCudnnHandle {
 public:
  // fallback: what runs instead when cuDNN cannot be used ("attention runs on the fp32 fallback
  // path"), for the one warning.
  LazyCudnnHandle(cudaStream_t stream, std::string fallback)
      : stream_(stream), fallback_(std::move(fallback)) {}
  ~LazyCudnnHandle() {
    if (handle_) cudnnDestroy(handle_);
  }
  LazyCudnnHandle(const LazyCudnnHandle&) = delete;
  LazyCudnnHandle& operator=(const LazyCudnnHandle&) = delete;

  // The handle, or nullptr for good when cuDNN cannot make one here (logged once).
  cudnnHandle_t get() {
    if (handle_ || disabled_) return handle_;
    cudnnStatus_t st = cudnnCreate(&handle_);
    if (st == CUDNN_STATUS_SUCCESS) st = cudnnSetStream(handle_, stream_);
    if (st != CUDNN_STATUS_SUCCESS) {
      if (handle_) cudnnDestroy(handle_);
      handle_ = nullptr;
      disabled_ = true;
      log_warning(std::string("cuDNN unavailable (") + cudnnGetErrorString(st) + "); " + fallback_);
    }
    return handle_;
  }

 private:
  cudaStream_t stream_;
  std::string fallback_;
  cudnnHandle_t handle_ = nullptr;
  bool disabled_ = false;
};

}  // namespace cuda
}  // namespace mg
