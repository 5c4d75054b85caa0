// A process that no MPI launcher started does not start MPI unless its communicator needs it
// (MpiSession::Start::WhenLaunched): a one-process run skips the singleton MPI_Init (about 0.35 s,
// the largest part of its start-up on the development machine), and still gets MPI when its config
// asks for `comm.backend: mpi` (the binary runs below show it in their start-up phases).
#include <gtest/gtest.h>
#include <mpi.h>
#include <nlohmann/json.hpp>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <stdexcept>
#include <string>

#include "comm/bootstrap.h"
#include "command_runner.h"
#include "tiny_dataset.h"

namespace dptrain {
namespace {

void clear_launcher_environment() {
  for (const char* name : {"OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_RANK", "PMI_SIZE", "MV2_COMM_WORLD_SIZE"})
    unsetenv(name);
}

TEST(LazyMpi, WithoutALauncherTheSessionIsOneRankAndMpiStaysDown) {
  clear_launcher_environment();
  EXPECT_FALSE(launched_by_mpi());
  const MpiSession session(nullptr, nullptr, MpiSession::Start::WhenLaunched);
  EXPECT_FALSE(session.started());
  EXPECT_EQ(session.rank(), 0);
  EXPECT_EQ(session.size(), 1);
  EXPECT_EQ(session.local_rank(), 0);
  EXPECT_EQ(session.local_size(), 1);
  EXPECT_FALSE(session.hostname().empty());
  int initialized = 1;
  MPI_Initialized(&initialized);
  EXPECT_EQ(initialized, 0);
  // The single-rank communicator needs no MPI; the others refuse an unstarted session.
  EXPECT_FALSE(communicator_needs_mpi(CommKind::Auto, Device::Cpu, 1));
  EXPECT_FALSE(communicator_needs_mpi(CommKind::Auto, Device::Cuda, 1));
  EXPECT_TRUE(communicator_needs_mpi(CommKind::Mpi, Device::Cpu, 1));
  EXPECT_TRUE(communicator_needs_mpi(CommKind::Nccl, Device::Cuda, 1));
  EXPECT_TRUE(communicator_needs_mpi(CommKind::Auto, Device::Cpu, 2));
  const auto single = make_communicator(CommKind::Auto, Device::Cpu, session, 0, 10.0);
  EXPECT_EQ(single->size(), 1);
  EXPECT_THROW(make_communicator(CommKind::Mpi, Device::Cpu, session, 0, 10.0), std::logic_error);
  MPI_Initialized(&initialized);
  EXPECT_EQ(initialized, 0);
}

TEST(LazyMpi, LauncherVariablesAreRecognised) {
  clear_launcher_environment();
  for (const char* name : {"OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_RANK"}) {
    setenv(name, "1", 1);
    EXPECT_TRUE(launched_by_mpi()) << name;
    unsetenv(name);
  }
  EXPECT_FALSE(launched_by_mpi());
}

/// The start-up phases of a one-process run of the binary on a small synthetic dataset (the first
/// metrics line's "startup").
nlohmann::json startup_phases(const std::string& extra, const std::string& name) {
  const std::filesystem::path dir = ::testing::TempDir() + name;
  std::filesystem::remove_all(dir);
  test_support::write_tiny_run(dir, /*train=*/32, /*test=*/8, /*epochs=*/1);
  const auto r = test_support::run_dptrain("train --device cpu --threads 1 --no-progress --config " +
                                           (dir / "tiny.yaml").string() + " --data " + (dir / "data").string() +
                                           " --out " + (dir / "run").string() + " " + extra);
  EXPECT_EQ(r.status, 0) << r.output;
  std::ifstream in(dir / "run" / "metrics.jsonl");
  std::string line;
  std::getline(in, line);
  std::filesystem::remove_all(dir);
  return line.empty() ? nlohmann::json{} : nlohmann::json::parse(line)["startup"]["phases"];
}

TEST(LazyMpi, OneProcessStartsMpiOnlyWhenItsConfigAsksForIt) {
  const nlohmann::json plain = startup_phases("", "dptrain_lazy_mpi_plain");
  ASSERT_TRUE(plain.is_object()) << plain.dump();
  EXPECT_FALSE(plain.contains("mpi_init")) << plain.dump();
  const nlohmann::json asked = startup_phases("--comm mpi", "dptrain_lazy_mpi_asked");
  ASSERT_TRUE(asked.is_object()) << asked.dump();
  EXPECT_TRUE(asked.contains("mpi_init")) << asked.dump();  // started, and the run trained through it
}

}  // namespace
}  // namespace dptrain
