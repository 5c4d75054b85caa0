// libFuzzer target: arbitrary bytes as a plan cache file (train.plan_cache, io/plan_cache.h).
// read_plan_file must never throw for the file's contents: it gives the records, or none and one
// warning. Records it accepts must survive being written and read back unchanged. The same bytes as
// a broadcast book (PlanBook::parse) may only throw std::runtime_error.
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <fstream>
#include <stdexcept>
#include <string>

#include "io/plan_cache.h"

namespace {

dptrain::PlanFingerprint fingerprint() {
  dptrain::PlanFingerprint fp;
  fp.gpu = "NVIDIA H200";
  fp.cc_major = 9, fp.cc_minor = 0, fp.sms = 132;
  fp.driver = 13000, fp.runtime = 13000, fp.cudnn = 91400, fp.cublas = 130000;
  fp.build = "fuzz";
  return fp;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::string path = "/tmp/dptrain_fuzz_plans_" + std::to_string(getpid()) + ".json";
  const std::string bytes(reinterpret_cast<const char*>(data), size);
  std::ofstream(path, std::ios::binary | std::ios::trunc) << bytes;
  const dptrain::PlanFingerprint fp = fingerprint();
  const dptrain::PlanFileRead read = dptrain::read_plan_file(path, fp);  // must not throw
  if (!read.book.empty()) {
    std::ofstream(path, std::ios::binary | std::ios::trunc) << dptrain::plan_file_text(read.book, fp);
    const dptrain::PlanFileRead again = dptrain::read_plan_file(path, fp);
    if (again.warning || !(again.book == read.book)) __builtin_trap();
  }
  try {
    (void)dptrain::PlanBook::parse(bytes);
  } catch (const std::runtime_error&) {
  }
  return 0;
}
