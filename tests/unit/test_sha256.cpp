// SHA-256 against the FIPS 180-2 example vectors (appendix B) and lengths around the 55/56/64-byte
// padding boundaries (expected values from Python's hashlib), plus streaming == one-shot, and the
// SHA-extensions path against the portable one.
#include <gtest/gtest.h>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <string_view>

#include "io/sha256.h"

namespace dptrain {
namespace {

TEST(Sha256, Fips180Vectors) {
  EXPECT_EQ(sha256_hex(std::string_view("abc")), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_EQ(sha256_hex(std::string_view("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq")),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
  EXPECT_EQ(sha256_hex(std::string(1000000, 'a')), "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
  EXPECT_EQ(sha256_hex(std::string_view("")), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  EXPECT_EQ(sha256_hex(std::string_view("abcdefghbcdefghicdefghijdefghijkefghijklfghijklmghijklmnhijklmnoijklmnopjklmnopqk"
                                        "lmnopqrlmnopqrsmnopqrstnopqrstu")),
            "cf5b16a778af8380036ce59e7b0492370b249b11e8f07a51afac45037afee9d1");
}

TEST(Sha256, PaddingBoundaries) {
  EXPECT_EQ(sha256_hex(std::string(55, 'a')), "9f4390f8d30c2dd92ec9f095b65e2b9ae9b0a925a5258e241c9f1e910f734318");
  EXPECT_EQ(sha256_hex(std::string(56, 'a')), "b35439a4ac6f0948b6d6f9e3c6af0f5f590ce20f1bde7090ef7970686ec6738a");
  EXPECT_EQ(sha256_hex(std::string(63, 'a')), "7d3e74a05d7db15bce4ad9ec0658ea98e3f06eeecf16b4c6fff2da457ddc2f34");
  EXPECT_EQ(sha256_hex(std::string(64, 'a')), "ffe054fe7ae0cb6dc65c3af9b61d5209f439851db43d0ba5997337df154668eb");
  EXPECT_EQ(sha256_hex(std::string(119, 'a')), "31eba51c313a5c08226adf18d4a359cfdfd8d2e816b13f4af952f7ea6584dcfb");
}

TEST(Sha256, StreamingMatchesOneShot) {
  std::string text;
  for (int i = 0; i < 300; ++i) text.push_back(static_cast<char>('!' + (i * 7) % 90));
  for (size_t length : {0u, 1u, 55u, 56u, 63u, 64u, 65u, 127u, 128u, 129u, 300u}) {
    const std::string_view message(text.data(), length);
    for (size_t chunk : {1u, 3u, 63u, 64u, 65u}) {
      Sha256 h;
      for (size_t at = 0; at < length; at += chunk) h.update(message.substr(at, chunk));
      EXPECT_EQ(to_hex(h.finish()), sha256_hex(message)) << "length " << length << " chunk " << chunk;
    }
  }
}

std::string digest_with(Sha256::Impl impl, std::string_view message, size_t chunk) {
  Sha256 h(impl);
  for (size_t at = 0; at < message.size(); at += chunk) h.update(message.substr(at, chunk));
  return to_hex(h.finish());
}

// The SHA-extensions path (where the CPU has it) against the portable one and the vectors: every
// length from 0 to 300 bytes (every padding case, one to five blocks), and multi-megabyte messages
// fed whole and in odd chunks (long runs of blocks through one call, the way checkpoints are hashed).
TEST(Sha256, ShaExtensionsMatchThePortableCode) {
  EXPECT_TRUE(Sha256::available(Sha256::Impl::Portable));
  if (!Sha256::available(Sha256::Impl::ShaExtensions)) {
    EXPECT_EQ(Sha256::best(), Sha256::Impl::Portable);
    EXPECT_THROW(Sha256{Sha256::Impl::ShaExtensions}, std::invalid_argument);
    GTEST_SKIP() << "this CPU has no SHA extensions";
  }
  EXPECT_EQ(Sha256::best(), Sha256::Impl::ShaExtensions);
  EXPECT_EQ(digest_with(Sha256::Impl::ShaExtensions, "abc", 64),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_EQ(digest_with(Sha256::Impl::ShaExtensions, std::string(1000000, 'a'), 1000000),
            "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
  std::string text(3 << 20, '\0');
  uint32_t x = 2463534242u;  // xorshift32: bytes with every bit pattern
  for (char& c : text) {
    x ^= x << 13, x ^= x >> 17, x ^= x << 5;
    c = static_cast<char>(x >> 24);
  }
  for (size_t length = 0; length <= 300; ++length) {
    const std::string_view message(text.data(), length);
    ASSERT_EQ(digest_with(Sha256::Impl::ShaExtensions, message, 64), digest_with(Sha256::Impl::Portable, message, 64))
        << "length " << length;
  }
  for (size_t chunk : {size_t{1} << 22, size_t{4097}, size_t{100003}}) {
    EXPECT_EQ(digest_with(Sha256::Impl::ShaExtensions, text, chunk), digest_with(Sha256::Impl::Portable, text, 1 << 22))
        << "chunk " << chunk;
  }
}

}  // namespace
}  // namespace dptrain
