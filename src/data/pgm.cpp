#include "data/pgm.h"

#include <cctype>
#include <fstream>
#include <sstream>
#include <stdexcept>

#include "core/error.h"

namespace dptrain {

namespace {

/// Reads the next header integer, skipping whitespace and comments.
int header_int(std::istream& in, const std::string& path, const char* what) {
  for (;;) {
    const int c = in.peek();
    if (c == '#') {
      std::string skip;
      std::getline(in, skip);
    } else if (c != EOF && std::isspace(c)) {
      in.get();
    } else {
      break;
    }
  }
  long v = -1;
  if (!(in >> v) || v < 0 || v > 65535) throw InputError(path, std::string("bad PGM header: cannot read the ") + what);
  return static_cast<int>(v);
}

}  // namespace

std::vector<uint8_t> read_pgm(const std::string& path, int rows, int cols) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw InputError(path, "cannot open the image");
  char magic[2] = {0, 0};
  in.read(magic, 2);
  if (!in || magic[0] != 'P' || (magic[1] != '5' && magic[1] != '2'))
    throw InputError(path, "not a PGM image (expected P5 or P2)");
  const int width = header_int(in, path, "width");
  const int height = header_int(in, path, "height");
  const int maxval = header_int(in, path, "maximum value");
  if (width != cols || height != rows)
    throw InputError(path, "image is " + std::to_string(width) + "x" + std::to_string(height) + ", expected " +
                               std::to_string(cols) + "x" + std::to_string(rows) + " (the model's input)");
  if (maxval < 1 || maxval > 255) throw InputError(path, "maximum value " + std::to_string(maxval) + " is not in 1..255");
  std::vector<uint8_t> pixels(static_cast<size_t>(rows) * cols);
  const std::string total = std::to_string(pixels.size());
  if (magic[1] == '5') {
    if (!std::isspace(in.get())) throw InputError(path, "bad PGM header: no whitespace before the pixel data");
    in.read(reinterpret_cast<char*>(pixels.data()), static_cast<std::streamsize>(pixels.size()));
    if (in.gcount() != static_cast<std::streamsize>(pixels.size()))
      throw InputError(path, "truncated: " + std::to_string(in.gcount()) + " of " + total + " pixels");
    for (uint8_t& p : pixels) {
      if (p > maxval) throw InputError(path, "pixel value above the maximum value " + std::to_string(maxval));
      p = static_cast<uint8_t>((p * 255 + maxval / 2) / maxval);
    }
  } else {
    for (size_t i = 0; i < pixels.size(); ++i) {
      long v = -1;
      if (!(in >> v)) throw InputError(path, "truncated: " + std::to_string(i) + " of " + total + " pixels");
      if (v < 0 || v > maxval) throw InputError(path, "pixel " + std::to_string(i) + " value " + std::to_string(v) + " outside 0.." + std::to_string(maxval));
      pixels[i] = static_cast<uint8_t>((v * 255 + maxval / 2) / maxval);
    }
  }
  return pixels;
}

void write_pgm(const std::string& path, const uint8_t* pixels, int rows, int cols) {
  std::ofstream out(path, std::ios::binary);
  out << "P5\n" << cols << " " << rows << "\n255\n";
  out.write(reinterpret_cast<const char*>(pixels), static_cast<std::streamsize>(rows) * cols);
  if (!out) throw std::runtime_error(path + ": cannot write the image");
}

}  // namespace dptrain
