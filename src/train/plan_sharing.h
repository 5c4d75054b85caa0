// The same plan on every rank: rank 0 plans (or reads the plan cache), and its choices are what
// every rank runs, so that a run's numbers never depend on which rank timed what, and N ranks do not
// each spend the planning time.
//
// share_plans() is the protocol, independent of what is planned (tests drive it on CPU ranks with a
// fake planner, tests/mpi/test_plan_sharing.cpp): rank 0 runs the planner on a PlanBook, the records
// it used are serialised and broadcast (Communicator::broadcast_bytes, through MPI on the host),
// and every other rank's book becomes exactly those. plan_on_every_rank() is the trainer's use of
// it: the cache file (io/plan_cache.h, train.plan_cache), the run folder's plans.json, and the
// model's convolution planners reading and writing the book through DeviceContext::plan_book().
#pragma once

#include <functional>
#include <string>

#include "io/plan_cache.h"

namespace dptrain {

class Communicator;
class DeviceContext;

/// Rank 0 runs `plan_on_root(book)`; then the records it used (PlanBook::used) replace every other
/// rank's `book`, which is marked fixed ("rank 0's plan": a key missing there is planned on that
/// rank, with a warning). Only rank 0 runs the planner. If it throws, rank 0 rethrows and every
/// other rank throws a std::runtime_error naming rank 0, so no rank is left waiting.
void share_plans(Communicator& comm, PlanBook& book, const std::function<void(PlanBook&)>& plan_on_root);

/// A run's own plan: plans.json in its folder.
std::string run_plan_path(const std::string& run_dir);

struct PlanningOptions {
  std::string plan_cache;  ///< train.plan_cache: auto | off | PATH
  std::string run_dir;     ///< rank 0 writes the plan used there (plans.json); empty: nowhere
  bool resume = false;     ///< with `auto`, the run folder's plans.json is read first (bit-for-bit resume)
};

/// Rank 0's planning with the plan files, host side (the unit tests drive it with a fake planner):
/// `book` becomes train.plan_cache's records (a PATH's marked fixed; a missing PATH is an
/// InputError; a bad file one `warn` line and no records), overlaid on resume with `auto` by the run
/// folder's plans.json; `plan(book)` plans, reading and recording there; then the records it used
/// are written to the run folder's plans.json (atomically; never onto the PATH itself) and, when
/// any is new, merged into the shared cache (a failure there is a warning: the run has its plan).
void plan_with_cache(const PlanningOptions& options, const PlanFingerprint& fp,
                     const std::function<void(const std::string&)>& warn, const std::function<void(PlanBook&)>& plan,
                     PlanBook& book);

/// Plans the model on every rank from one plan. `plan(root)` plans every batch size this rank
/// runs; on rank 0 (root true) also every size the other ranks run. On CUDA, rank 0 plans with the
/// book of train.plan_cache (and on resume the run folder's plans.json), writes the plan it used
/// into the run folder and its new choices into the shared cache (never into a PATH), and sends it
/// to the others, who plan from it. On the CPU nothing is planned by measurement: plan() is just called.
void plan_on_every_rank(Communicator& comm, DeviceContext& ctx, const PlanningOptions& options,
                        const std::function<void(bool root)>& plan);

}  // namespace dptrain
