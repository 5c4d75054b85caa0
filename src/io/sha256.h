// SHA-256 (FIPS 180-4) for checkpoint integrity checks.
//
// A small self-contained implementation so the checkpoint code needs no crypto library (CI would
// otherwise have to install libssl-dev). It is only used to detect corruption, not for security;
// tests check it against the FIPS 180-2 example vectors. Streaming: update() any number of times,
// then finish() once.
//
// Where the CPU has the x86 SHA extensions (SHA-NI: Intel since Ice Lake and Goldmont, AMD since
// Zen), the blocks go through them: about 5x the portable code's 360 MB/s, which is most of a
// checkpoint write's time at the end of a run (every byte is hashed twice: the data digest and the
// per-tensor digests).
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>

namespace dptrain {

class Sha256 {
 public:
  using Digest = std::array<uint8_t, 32>;
  /// How the 64-byte blocks are compressed. Both give the same digests; tests compare them.
  enum class Impl { Portable, ShaExtensions };

  /// The fastest implementation this CPU runs.
  static Impl best();
  /// Whether this CPU runs `impl`.
  static bool available(Impl impl);

  Sha256() : Sha256(best()) {}
  /// `impl` must be available().
  explicit Sha256(Impl impl);
  void update(std::span<const uint8_t> bytes);
  void update(std::string_view text);
  /// Pads and returns the digest. The object must not be updated afterwards.
  Digest finish();

 private:
  void compress(const uint8_t* blocks, size_t count);

  Impl impl_;
  std::array<uint32_t, 8> state_;
  std::array<uint8_t, 64> buffer_{};
  size_t buffered_ = 0;     ///< bytes waiting in buffer_ (always < 64 between calls)
  uint64_t total_bytes_ = 0;
};

/// Lower-case hex of a digest (64 characters).
std::string to_hex(const Sha256::Digest& digest);

/// Hex SHA-256 of `bytes` in one call.
std::string sha256_hex(std::span<const uint8_t> bytes);
std::string sha256_hex(std::string_view text);

}  // namespace dptrain
