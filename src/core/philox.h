// Philox-4x32-10 counter-based random numbers (Salmon et al., "Parallel random numbers: as easy as
// 1, 2, 3", SC'11), shared bit-for-bit by the CPU and GPU backends.
//
// Every draw in dptrain is a pure function of (key, counter): the shuffle is keyed by (seed, epoch),
// dropout by (seed, epoch, global sample index, layer, element), initialisation by (seed, parameter,
// element), augmentation by (seed, epoch, global sample index) (core/augment.h). No generator state is carried between steps, so the draws do not depend on how many
// ranks share the work or where a run was resumed.
#pragma once

#include <cstdint>

#include "core/host_device.h"

namespace dptrain::philox {

struct U32x4 {
  uint32_t v[4];
};

DPTRAIN_HD uint32_t mulhilo(uint32_t a, uint32_t b, uint32_t* hi) {
  const uint64_t p = static_cast<uint64_t>(a) * b;
  *hi = static_cast<uint32_t>(p >> 32);
  return static_cast<uint32_t>(p);
}

/// Ten rounds of Philox-4x32 on `ctr` under the 64-bit key `key`.
DPTRAIN_HD U32x4 philox4x32(U32x4 ctr, uint64_t key) {
  uint32_t k0 = static_cast<uint32_t>(key), k1 = static_cast<uint32_t>(key >> 32);
  for (int round = 0; round < 10; ++round) {
    uint32_t hi0, hi1;
    const uint32_t lo0 = mulhilo(0xD2511F53u, ctr.v[0], &hi0);
    const uint32_t lo1 = mulhilo(0xCD9E8D57u, ctr.v[2], &hi1);
    ctr = U32x4{{hi1 ^ ctr.v[1] ^ k0, lo1, hi0 ^ ctr.v[3] ^ k1, lo0}};
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  return ctr;
}

/// Uniform float in [0, 1) from the top 24 bits: exactly representable, identical on CPU and GPU.
DPTRAIN_HD float to_unit_float(uint32_t x) { return static_cast<float>(x >> 8) * (1.0f / 16777216.0f); }

/// Uniform double in [0, 1) from 53 bits of two words.
DPTRAIN_HD double to_unit_double(uint32_t hi, uint32_t lo) {
  const uint64_t bits = (static_cast<uint64_t>(hi) << 21) ^ (lo >> 11);
  return static_cast<double>(bits & ((uint64_t{1} << 53) - 1)) * (1.0 / 9007199254740992.0);
}

/// Streams keep different uses of one seed apart (counter word 3).
enum Stream : uint32_t { kShuffle = 1, kDropout = 2, kInit = 3, kAugment = 4 /* core/augment.h */ };

/// The four dropout words of elements [4 * group, 4 * group + 4) of global sample `sample` in
/// dropout layer `layer`: one generator call serves four consecutive elements.
DPTRAIN_HD U32x4 dropout_words(uint64_t seed, uint32_t epoch, uint32_t layer, uint32_t sample, uint32_t group) {
  return philox4x32(U32x4{{group, sample, (epoch << 8) | (layer & 0xFFu), kDropout}}, seed);
}

/// Uniform in [0,1) for element `element` of global sample `sample` in dropout layer `layer`.
DPTRAIN_HD float dropout_uniform(uint64_t seed, uint32_t epoch, uint32_t layer, uint32_t sample,
                                 uint32_t element) {
  return to_unit_float(dropout_words(seed, epoch, layer, sample, element >> 2).v[element & 3u]);
}

/// 64-bit sort key of dataset index `index` for the shuffle of `epoch`.
DPTRAIN_HD uint64_t shuffle_key(uint64_t seed, uint32_t epoch, uint32_t index) {
  const U32x4 r = philox4x32(U32x4{{index, epoch, 0u, kShuffle}}, seed);
  return (static_cast<uint64_t>(r.v[0]) << 32) | r.v[1];
}

/// Uniform double in [0,1) for element `element` of parameter tensor `param`.
DPTRAIN_HD double init_uniform(uint64_t seed, uint32_t param, uint64_t element) {
  const U32x4 r = philox4x32(
      U32x4{{static_cast<uint32_t>(element), static_cast<uint32_t>(element >> 32), param, kInit}}, seed);
  return to_unit_double(r.v[0], r.v[1]);
}

}  // namespace dptrain::philox
