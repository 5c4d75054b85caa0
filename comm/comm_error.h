// CommError: a failed collective or communication set-up (an MPI error, an NCCL asynchronous
// error, a collective that timed out). Not an InputError: main() reports it and ends the job with
// exit status 1 through abort_job, since the other ranks may be stuck waiting for this one.
#pragma once

#include <stdexcept>

namespace dptrain {

class CommError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

}  // namespace dptrain
