// Netpbm greyscale images (PGM): what `dptrain predict` classifies.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace dptrain {

/// A PGM of `cols` x `rows` pixels (binary P5 or ascii P2, maxval <= 255, '#' comments) as
/// rows * cols bytes scaled to 0..255. Anything else is an InputError naming the file.
std::vector<uint8_t> read_pgm(const std::string& path, int rows = 28, int cols = 28);

/// Writes a binary (P5) PGM.
void write_pgm(const std::string& path, const uint8_t* pixels, int rows, int cols);

}  // namespace dptrain
