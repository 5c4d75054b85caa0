#include "cli/run_messages.h"

#include <algorithm>
#include <cctype>
#include <string_view>

namespace dptrain::cli {

namespace {

std::vector<std::string>& recorded_command_line() {
  static std::vector<std::string> line;
  return line;
}

/// `arg` as a shell word: unchanged when it is made of safe characters, else single-quoted.
std::string shell_word(const std::string& arg) {
  const bool safe = !arg.empty() && std::all_of(arg.begin(), arg.end(), [](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) || std::string_view("-_./=:,+@%").find(c) != std::string_view::npos;
  });
  if (safe) return arg;
  std::string quoted = "'";
  for (char c : arg) quoted += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return quoted + "'";
}

}  // namespace

std::string with_thousands(int64_t n) {
  std::string digits = std::to_string(n < 0 ? -n : n);
  for (int i = static_cast<int>(digits.size()) - 3; i > 0; i -= 3) digits.insert(static_cast<size_t>(i), 1, ',');
  return n < 0 ? "-" + digits : digits;
}

std::string run_banner(const BannerFacts& f) {
  std::string out = "dptrain train: " + f.config_name + " (" + f.config_source + "), " + with_thousands(f.parameters) +
                    " parameters\n";
  out += "  device:     " + f.device + ", " + f.precision + "\n";
  out += "  ranks:      " + std::to_string(f.ranks) +
         (f.ranks > 1 ? " (gradients all-reduced over " + f.exchange + ")" : std::string()) + "\n";
  const int64_t planned = f.steps_per_epoch * f.epochs;
  out += "  batch:      " + with_thousands(f.global_batch) + " global, " + with_thousands(f.per_rank_batch) +
         " per rank; " + std::to_string(f.epochs) + " epoch(s) of " + with_thousands(f.steps_per_epoch) + " steps";
  if (f.max_steps > 0 && f.max_steps < planned) out += ", stopping at step " + with_thousands(f.max_steps);
  out += "\n";
  out += "  data:       " + f.data_dir + " (" + with_thousands(f.train_images) + " training, " +
         with_thousands(f.test_images) + " test images)\n";
  out += "  run folder: " + f.run_dir + " (the resolved config is in config.yaml; --verbose prints it)\n";
  return out;
}

std::string resume_command(const std::vector<std::string>& argv, const std::string& launcher,
                           const std::string& mpirun, const std::string& run_dir) {
  std::vector<std::string> words;
  if (launcher.empty()) {
    words.push_back(argv.empty() ? std::string("dptrain") : argv[0]);
    words.push_back("train");
  }
  // The flags after the subcommand, but --resume (it becomes `auto`).
  const auto train = std::find(argv.begin() + (argv.empty() ? 0 : 1), argv.end(), "train");
  bool has_out = false;
  for (auto it = train == argv.end() ? argv.end() : train + 1; it != argv.end(); ++it) {
    if (*it == "--resume") {
      if (it + 1 != argv.end()) ++it;
      continue;
    }
    if (it->starts_with("--resume=")) continue;
    if (*it == "--out" || it->starts_with("--out=")) has_out = true;
    words.push_back(*it);
  }
  words.push_back("--resume");
  words.push_back("auto");
  if (!has_out) {
    words.push_back("--out");
    words.push_back(run_dir);
  }
  std::string line = launcher.empty() ? mpirun : launcher;  // shell text already
  for (const std::string& w : words) {
    if (!line.empty()) line += ' ';
    line += shell_word(w);
  }
  return line;
}

void set_command_line(int argc, const char* const* argv) { recorded_command_line().assign(argv, argv + argc); }

const std::vector<std::string>& command_line() { return recorded_command_line(); }

}  // namespace dptrain::cli
