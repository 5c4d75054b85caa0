// libFuzzer target: the IDX parser on arbitrary bytes must either return a well-formed array or
// throw InputError; nothing else (crash, hang, other exception, huge allocation).
#include <cstddef>
#include <cstdint>
#include <vector>

#include "core/error.h"
#include "data/idx_reader.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::vector<uint8_t> bytes(data, data + size);
  for (int ndims : {1, 3}) {
    try {
      const dptrain::IdxArray a = dptrain::parse_idx_u8(bytes, ndims, "fuzz");
      size_t expected = 1;
      for (uint32_t d : a.dims) expected *= d;
      if (a.data.size() != expected) __builtin_trap();
    } catch (const dptrain::InputError&) {
    }
  }
  return 0;
}
