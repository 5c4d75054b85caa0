// What `dptrain inspect FILE` prints: the structure, metadata and per-tensor checksum status of any
// safetensors file, and whether it is valid as dptrain would load it.
//
// Invariants: never throws for bad input and never changes the file: an unreadable or damaged
// file gives valid=false and as much as could be read. A dptrain file is judged by the checks the
// loaders (io/checkpoint_format.h) make (io/checkpoint_validation.h); a plain safetensors file by
// its structure only.
#pragma once

#include <cstdint>
#include <span>
#include <string>

namespace dptrain {

struct InspectReport {
  std::string text;  ///< ends with "valid" or "INVALID: reason"
  bool valid = false;
  std::string problem;  ///< the reason, naming the file, where not valid
};
/// Never throws for bad input: an unreadable or damaged file gives valid=false and as much as could
/// be read (header entries, per-tensor checksum status).
InspectReport inspect_report(const std::string& path);
InspectReport inspect_bytes(std::span<const uint8_t> bytes, const std::string& source);

}  // namespace dptrain
