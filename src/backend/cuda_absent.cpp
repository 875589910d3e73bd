// Built when the CUDA backend is not compiled in (no nvcc at configure time).
#include "mogagen/ops.h"

namespace mg {

bool cuda_available() { return false; }
int cuda_compute_capability(int) { return 0; }

std::unique_ptr<Ops> make_cuda_ops(int) {
  throw device_error(
      "this mogagen was built without the CUDA backend (nvcc was not found at configure "
      "time); rebuild with -DMOGAGEN_CUDA=ON on a machine with the CUDA toolkit, or use "
      "--device cpu");
}

}  // namespace mg
