// dptrain's build id: a hash of every source file and the code-shaping build flags,
// generated at every build (cmake/build_id.cmake). It changes whenever the code does, so anything
// keyed by it (the plan cache, src/io/plan_cache.h) is never reused by a different build.
#pragma once

namespace dptrain {

const char* build_id();

}  // namespace dptrain
