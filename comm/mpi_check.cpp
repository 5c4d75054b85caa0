#include "comm/mpi_check.h"

#include <cstdio>
#include <string>

namespace dptrain {

void throw_mpi_error(int code, const char* call, const char* file, int line) {
  char text[MPI_MAX_ERROR_STRING] = {};
  int len = 0;
  if (MPI_Error_string(code, text, &len) != MPI_SUCCESS) std::snprintf(text, sizeof text, "code %d", code);
  int rank = -1;
  int initialized = 0;
  int finalized = 0;
  MPI_Initialized(&initialized);
  MPI_Finalized(&finalized);
  if (initialized && !finalized) MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  throw CommError("MPI error '" + std::string(text) + "' in " + call + " at " + file + ":" +
                  std::to_string(line) + " (rank " + std::to_string(rank) + ")");
}

}  // namespace dptrain
