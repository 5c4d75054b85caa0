// The house's floors (docs/DESIGN.md): every #include of a project header points to the same
// folder or down. The order, bottom up: core; cpu, io and kernels; data; layers (with layers/cpu
// and layers/cuda); model; optim and comm (beside each other: neither includes the other); train;
// cli. A file that reaches up fails here with its line, before the link graph (one CMake target
// per floor) refuses it less clearly.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <vector>

namespace {

namespace fs = std::filesystem;

const std::map<std::string, int> kFloor = {{"core", 0},  {"cpu", 1},   {"io", 1},    {"kernels", 1}, {"data", 2},
                                           {"layers", 3}, {"model", 4}, {"optim", 5}, {"comm", 5},    {"train", 6},
                                           {"cli", 7}};

/// The floor folder of a source file (relative to the repository: src/<floor>/..., kernels/..., comm/...).
std::string folder_of_file(const fs::path& relative) {
  auto it = relative.begin();
  if (*it == "src") ++it;
  return it->string();
}

/// The floor folder of an include ("core/buffer.h" -> "core").
std::string folder_of_include(const std::string& header) { return header.substr(0, header.find('/')); }

TEST(Floors, IncludesPointDown) {
  const fs::path root = DPTRAIN_SOURCE_DIR;
  std::vector<std::string> violations;
  int files = 0;
  for (const char* top : {"src", "kernels", "comm"}) {
    for (const auto& entry : fs::recursive_directory_iterator(root / top)) {
      const std::string ext = entry.path().extension().string();
      if (!entry.is_regular_file() || (ext != ".h" && ext != ".cpp" && ext != ".cu" && ext != ".cuh")) continue;
      const fs::path relative = fs::relative(entry.path(), root);
      const std::string from = folder_of_file(relative);
      ++files;
      ASSERT_TRUE(kFloor.contains(from)) << relative << " is in no floor: add its folder to kFloor and DESIGN.md";
      std::ifstream in(entry.path());
      std::string line;
      for (int number = 1; std::getline(in, line); ++number) {
        if (!line.starts_with("#include \"")) continue;
        const std::string header = line.substr(10, line.find('"', 10) - 10);
        if (header.find('/') == std::string::npos) continue;  // beside the file itself
        const std::string to = folder_of_include(header);
        const auto floor = kFloor.find(to);
        if (floor == kFloor.end()) {
          violations.push_back(relative.string() + ":" + std::to_string(number) + " includes " + header +
                               ", which is in no floor");
        } else if (to != from && floor->second >= kFloor.at(from)) {
          violations.push_back(relative.string() + ":" + std::to_string(number) + " (" + from + ") includes " +
                               header + " (" + to + "): an arrow up or sideways");
        }
      }
    }
  }
  EXPECT_GT(files, 100);
  for (const std::string& v : violations) ADD_FAILURE() << v;
}

}  // namespace
