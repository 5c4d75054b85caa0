// dptrain inspect: what a checkpoint or weights file holds (metadata, tensors with their checksum
// status) and whether it is valid. Exit status 0 for a valid file, 2 otherwise.
#include <cstdio>
#include <memory>
#include <string>

#include "cli/commands.h"
#include "io/checkpoint.h"

namespace dptrain::cli {

Command add_inspect(CLI::App& app) {
  auto path = std::make_shared<std::string>();
  CLI::App* sub = app.add_subcommand("inspect", "Show a checkpoint's or weights file's contents and check it");
  sub->add_option("file", *path, "A .safetensors checkpoint or weights file")->required();
  return [path] {
    const InspectReport report = inspect_report(*path);
    std::fputs(report.text.c_str(), stdout);
    if (!report.text.empty() && report.text.back() != '\n') std::fputc('\n', stdout);
    if (report.valid) return 0;
    // The report (stdout) lists what could be read; the verdict is also the one error line on stderr.
    std::fprintf(stderr, "dptrain: error: %s\n", report.problem.c_str());
    return 2;
  };
}

}  // namespace dptrain::cli
