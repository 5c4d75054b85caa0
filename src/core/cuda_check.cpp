#include "core/cuda_check.h"

namespace dptrain {

void throw_library_error(const char* library, const char* call, const char* file, int line,
                         const std::string& what) {
  throw CudaError(std::string(library) + " error '" + what + "' in " + call + " at " + file + ":" +
                  std::to_string(line));
}

}  // namespace dptrain
