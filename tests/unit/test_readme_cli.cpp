// README.md's command summary (the first code block under "## Command line") against the binary's
// --help: the same subcommands, each with the same long options, and an option is in [brackets]
// in the README exactly when --help does not mark it REQUIRED.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <array>
#include <cstdio>
#include <fstream>
#include <map>
#include <regex>
#include <set>
#include <sstream>
#include <string>

namespace dptrain {
namespace {

std::string help_of(const std::string& sub) {
  const std::string cmd = std::string(DPTRAIN_BINARY) + " " + sub + " --help 2>&1";
  std::string out;
  FILE* p = popen(cmd.c_str(), "r");
  if (p == nullptr) return out;
  std::array<char, 4096> buf{};
  size_t n;
  while ((n = fread(buf.data(), 1, buf.size(), p)) > 0) out.append(buf.data(), n);
  pclose(p);
  return out;
}

/// The subcommands `dptrain --help` lists.
std::set<std::string> subcommands() {
  std::set<std::string> subs;
  std::istringstream in(help_of(""));
  bool listing = false;
  for (std::string line; std::getline(in, line);) {
    if (line.starts_with("Subcommands:")) listing = true;
    else if (listing && line.starts_with("  ") && line[2] != ' ') subs.insert(line.substr(2, line.find(' ', 2) - 2));
    else if (listing && line.empty()) listing = false;
  }
  return subs;
}

/// A subcommand's long options from its --help (not --help itself): name -> required.
std::map<std::string, bool> help_options(const std::string& sub) {
  std::map<std::string, bool> options;
  std::istringstream in(help_of(sub));
  for (std::string line; std::getline(in, line);) {
    // Option lines start at column 2; wrapped descriptions (which may quote flags) further in.
    if (!line.starts_with("  -") ) continue;
    const std::string names = line.substr(2, line.find(' ', 2) - 2);
    std::istringstream parts(names);
    for (std::string name; std::getline(parts, name, ',');)
      if (name.starts_with("--") && name != "--help") options[name] = line.find(" REQUIRED") != std::string::npos;
  }
  return options;
}

/// The README's summary: subcommand -> its long options -> whether written inside [brackets].
std::map<std::string, std::map<std::string, bool>> readme_summary() {
  std::ifstream in(std::string(DPTRAIN_SOURCE_DIR) + "/README.md");
  std::string line;
  while (std::getline(in, line) && line != "## Command line") {}
  while (std::getline(in, line) && !line.starts_with("```")) {}
  std::map<std::string, std::map<std::string, bool>> summary;
  std::string sub;
  int depth = 0;
  const std::regex flag(R"(^--[a-z0-9][a-z0-9-]*)");
  while (std::getline(in, line) && !line.starts_with("```")) {
    if (line.starts_with("dptrain ")) {
      sub = line.substr(8, line.find(' ', 8) - 8);
      summary[sub];
      depth = 0;
    }
    for (size_t i = 0; i < line.size(); ++i) {
      if (line[i] == '[') ++depth;
      else if (line[i] == ']') --depth;
      std::smatch m;
      const std::string rest = line.substr(i);
      if (line.compare(i, 2, "--") == 0 && (i == 0 || line[i - 1] != '-') && std::regex_search(rest, m, flag))
        summary[sub][m.str()] = depth > 0;
    }
  }
  return summary;
}

TEST(Readme, CommandSummaryMatchesHelp) {
  const auto summary = readme_summary();
  std::set<std::string> readme_subs;
  for (const auto& [sub, flags] : summary) readme_subs.insert(sub);
  ASSERT_FALSE(readme_subs.empty()) << "no command summary found in README.md";
  EXPECT_EQ(readme_subs, subcommands());
  for (const std::string& sub : subcommands()) {
    const std::map<std::string, bool> help = help_options(sub);
    const auto it = summary.find(sub);
    if (it == summary.end()) continue;  // reported above
    const std::map<std::string, bool>& readme = it->second;
    for (const auto& [name, required] : help) {
      const auto r = readme.find(name);
      if (r == readme.end()) {
        ADD_FAILURE() << "README's `dptrain " << sub << "` lacks " << name << ", which --help shows";
        continue;
      }
      EXPECT_EQ(r->second, !required) << "dptrain " << sub << " " << name << ": "
                                      << (required ? "required, but in brackets in README"
                                                   : "optional, but not in brackets in README");
    }
    for (const auto& [name, optional] : readme)
      EXPECT_TRUE(help.contains(name)) << "README's `dptrain " << sub << "` shows " << name << ", which --help does not";
  }
}

}  // namespace
}  // namespace dptrain
