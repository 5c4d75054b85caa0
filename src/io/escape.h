// Text read from untrusted files (names, metadata, YAML error messages quoting a byte), made safe
// to print on one line.
#pragma once

#include <string>
#include <string_view>

namespace dptrain {

/// `text` with control characters (except tab) written as \xNN, so names and metadata read from an
/// untrusted file cannot drive the terminal or cut the line when printed (a NUL, a newline).
std::string escape_control_chars(std::string_view text);

}  // namespace dptrain
