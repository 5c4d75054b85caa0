// The dptrain subcommands. Each registers its options on a CLI11 subcommand and returns the
// function that runs it (after parsing) and gives the exit status.
#pragma once

#include <CLI/CLI.hpp>

#include <functional>

namespace dptrain::cli {

using Command = std::function<int()>;

Command add_train(CLI::App& app);
Command add_eval(CLI::App& app);
Command add_predict(CLI::App& app);
Command add_bench(CLI::App& app);
Command add_inspect(CLI::App& app);
Command add_plot(CLI::App& app);

}  // namespace dptrain::cli
