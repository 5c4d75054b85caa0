// libFuzzer target: arbitrary bytes as a safetensors/checkpoint file. Everything a hostile file can
// reach must end in a clean InputError (or be accepted): no crash, no sanitizer report, no other
// exception, no unbounded allocation.
//
// Build: clang++ -std=c++20 -g -O1 -fsanitize=fuzzer,address,undefined -Isrc \
//          tests/fuzz/fuzz_checkpoint.cpp src/io/{safetensors,checkpoint_*,sha256,atomic_file}.cpp
// Run:   ./a.out -max_total_time=60 CORPUS_DIR   (seed it with a real checkpoint)
#include <cstddef>
#include <cstdint>
#include <span>

#include "core/error.h"
#include "io/checkpoint_format.h"
#include "io/checkpoint_inspect.h"
#include "io/checkpoint_validation.h"
#include "io/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::span<const uint8_t> bytes(data, size);
  try {
    dptrain::SafeTensorsFile file = dptrain::parse_safetensors(bytes, "fuzz");
    // Forged checksums are easy to compute, so the metadata decoding must be safe on its own:
    // exercise it directly rather than only behind the checksum check.
    try {
      dptrain::parse_checkpoint_state(file.metadata, "fuzz");
    } catch (const dptrain::InputError&) {
    }
    try {
      dptrain::verify_checksums(file);
    } catch (const dptrain::InputError&) {
    }
    for (const dptrain::SafeTensor& t : file.tensors) {
      if (t.dtype == "F32") (void)file.f32(t.name, t.shape);
    }
    (void)dptrain::checkpoint_from_file(std::move(file));
  } catch (const dptrain::InputError&) {
  }
  (void)dptrain::inspect_bytes(bytes, "fuzz");  // never throws for bad input
  return 0;
}
