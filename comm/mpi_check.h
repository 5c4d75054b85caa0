// MPI_CHECK: the check macro for MPI calls, like CUDA_CHECK (core/cuda_check.h): on failure it throws
// CommError with the call's text, file:line, this rank and MPI's own error string. It only sees
// errors if the communicator's error handler is MPI_ERRORS_RETURN (the communicators set it on their
// own duplicate of MPI_COMM_WORLD); under the default MPI_ERRORS_ARE_FATAL MPI aborts by itself.
#pragma once

#include <mpi.h>

#include "comm/comm_error.h"

namespace dptrain {

[[noreturn]] void throw_mpi_error(int code, const char* call, const char* file, int line);

}  // namespace dptrain

#define MPI_CHECK(call)                                                                       \
  do {                                                                                        \
    int dptrain_mpi_status_ = (call);                                                         \
    if (dptrain_mpi_status_ != MPI_SUCCESS)                                                   \
      ::dptrain::throw_mpi_error(dptrain_mpi_status_, #call, __FILE__, __LINE__);             \
  } while (0)
