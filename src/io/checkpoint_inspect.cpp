// The `inspect` report. See io/checkpoint_inspect.h.
#include "io/checkpoint_inspect.h"

#include <algorithm>
#include <array>
#include <map>
#include <vector>

#include "core/error.h"
#include "io/atomic_file.h"
#include "io/checkpoint_format.h"
#include "io/checkpoint_validation.h"
#include "io/safetensors.h"

namespace dptrain {
namespace {

std::string pad_to(std::string s, size_t width) {
  if (s.size() < width) s.append(width - s.size(), ' ');
  return s;
}

/// A checkpoint's 0-based `epoch` as training messages number it (from 1), and where in it the
/// checkpoint stands; "" when the value is not a plain count.
std::string epoch_as_counted(const std::string& value, const std::map<std::string, std::string>& metadata) {
  if (value.empty() || value.size() > 12 || !std::all_of(value.begin(), value.end(), [](char c) { return c >= '0' && c <= '9'; }))
    return "";
  const int64_t epoch = std::stoll(value);
  const auto samples = metadata.find("samples_in_epoch");
  const std::string where = samples != metadata.end() && samples->second == "0" && epoch > 0
                                ? "not begun: epoch " + std::to_string(epoch) + " is complete; "
                                : "";
  return std::to_string(epoch + 1) + " (" + where + "counted from 1 as training messages count; stored as " + value + ")";
}

/// A metadata value as listed: escaped, and cut where it is long (a foreign file's 90 MB string was
/// printed whole). The config, listed apart, is never cut.
std::string shown(const std::string& value) {
  constexpr size_t kMaxShown = 200;
  if (value.size() <= kMaxShown) return escape_control_chars(value);
  return escape_control_chars(value.substr(0, kMaxShown)) + "... (" + std::to_string(value.size()) + " bytes)";
}

void append_metadata(std::string& out, const std::map<std::string, std::string>& metadata) {
  out += "metadata:\n";
  const auto format = metadata.find("format");
  const bool checkpoint = format != metadata.end() && format->second == kCheckpointFormat;
  for (const auto& [key, value] : metadata) {
    if (key == "epoch" && checkpoint && !epoch_as_counted(value, metadata).empty()) {
      out += "  epoch: " + epoch_as_counted(value, metadata) + "\n";
    } else if (key == "tensor_sha256") {
      out += "  tensor_sha256: (per tensor, below)\n";
    } else if (key == "config") {
      out += "  config: |\n";
      size_t start = 0;
      while (start < value.size()) {
        size_t end = value.find('\n', start);
        if (end == std::string::npos) end = value.size();
        out += "    " + escape_control_chars(value.substr(start, end - start)) + "\n";
        start = end + 1;
      }
    } else {
      out += "  " + escape_control_chars(key) + ": " + shown(value) + "\n";
    }
  }
}

/// ", but ..." naming the first float32 tensor that holds NaN or Inf values (dptrain never writes
/// them: eval and predict refuse such weights), or empty.
std::string non_finite_note(const SafeTensorsFile& file) {
  for (const SafeTensor& t : file.tensors) {
    if (t.dtype != "F32") continue;
    if (const auto problem = non_finite_weights_problem(t.name, file.f32(t.name, t.shape))) return ", but " + *problem;
  }
  return "";
}

}  // namespace

InspectReport inspect_bytes(std::span<const uint8_t> bytes, const std::string& source) {
  InspectReport report;
  std::string& out = report.text;
  out += "file: " + source + " (" + std::to_string(bytes.size()) + " bytes)\n";
  SafeTensorsFile file;
  try {
    file = parse_safetensors(bytes, source);
  } catch (const InputError& e) {
    out += describe_unvalidated_header(bytes);
    out += std::string("INVALID: ") + e.what() + "\n";
    report.problem = e.what();
    return report;
  }
  const auto format_it = file.metadata.find("format");
  const std::string format = format_it == file.metadata.end() ? "" : format_it->second;
  const bool dptrain_file = format == kCheckpointFormat || format == kWeightsFormat;
  out += "format: " + (format.empty() ? std::string("(none: plain safetensors)") : escape_control_chars(format)) + "\n";
  out += "header: " + std::to_string(file.header_bytes) + " bytes, data: " + std::to_string(file.data_bytes) +
         " bytes, tensors: " + std::to_string(file.tensors.size()) + "\n";
  append_metadata(out, file.metadata);

  ChecksumStatus status;
  if (dptrain_file) status = check_checksums(file);
  std::vector<std::array<std::string, 4>> rows = {{"name", "dtype", "shape", "sha256"}};
  for (const SafeTensor& t : file.tensors) {
    rows.push_back({escape_control_chars(t.name), t.dtype, shape_to_string(t.shape), dptrain_file ? status.per_tensor[t.name] : "-"});
  }
  std::array<size_t, 4> width{};
  for (const auto& row : rows) {
    for (size_t c = 0; c < 4; ++c) width[c] = std::max(width[c], row[c].size());
  }
  out += "tensors:\n";
  for (const auto& row : rows) {
    out += "  " + pad_to(row[0], width[0] + 2) + pad_to(row[1], width[1] + 2) + pad_to(row[2], width[2] + 2) + row[3] +
           "\n";
  }

  if (!dptrain_file) {
    report.valid = true;
    out += "valid (structure only: a plain safetensors file has no dptrain checksums)" + non_finite_note(file) + "\n";
    return report;
  }
  try {
    if (format == kCheckpointFormat) {
      check_format(file, kCheckpointFormat);
      if (!status.problem.empty()) throw InputError(source, status.problem);
      parse_checkpoint_state(file.metadata, source);
    } else {
      check_format(file, kWeightsFormat);
      if (!status.problem.empty()) throw InputError(source, status.problem);
    }
  } catch (const InputError& e) {
    out += std::string("INVALID: ") + e.what() + "\n";
    report.problem = e.what();
    return report;
  }
  report.valid = true;
  out += "valid" + non_finite_note(file) + "\n";
  return report;
}

InspectReport inspect_report(const std::string& path) {
  std::string bytes;
  try {
    bytes = read_whole_file(path);
  } catch (const InputError& e) {
    return {"file: " + path + "\nINVALID: " + e.what() + "\n", false, e.what()};
  }
  return inspect_bytes(std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size()), path);
}

}  // namespace dptrain
