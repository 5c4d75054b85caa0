// Error types that decide dptrain's exit status.
//
// Library code throws; only main() catches, prints one line and chooses the exit code:
// InputError (bad config, data, checkpoint, flags) -> 2, anything else -> 1. Nothing below main()
// calls exit() or validates with assert (NDEBUG would remove the check).
#pragma once

#include <stdexcept>
#include <string>
#include <string_view>

namespace dptrain {

/// Bad input from the user: a config, data file, checkpoint or flag. The message names the
/// file (or key) and the problem.
class InputError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
  InputError(std::string_view source, std::string_view problem)
      : std::runtime_error(std::string(source) + ": " + std::string(problem)) {}
};

}  // namespace dptrain
