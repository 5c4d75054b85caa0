#include <bit>
#include <cstring>

#include "core/error.h"
#include "io/atomic_file.h"
#include "io/checkpoint.h"

namespace dptrain {

static_assert(std::endian::native == std::endian::little, "safetensors data is little-endian; so is every target here");

namespace {

std::vector<TensorRef> as_refs(const std::vector<NamedTensor>& tensors) {
  std::vector<TensorRef> refs;
  for (const NamedTensor& t : tensors)
    refs.push_back({t.name, "F32", t.shape,
                    std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(t.values.data()), t.values.size_bytes())});
  return refs;
}

}  // namespace

void save_weights(const std::string& path, const std::vector<NamedTensor>& tensors, const std::string& config_yaml) {
  const std::vector<uint8_t> bytes =
      encode_safetensors(as_refs(tensors), {{"format", "dptrain-weights"}, {"config", config_yaml}});
  write_file_atomically(path, bytes);
}

SafeTensorsFile load_weights(const std::string& path) {
  SafeTensorsFile file = read_safetensors(path);
  const auto format = file.metadata.find("format");
  if (format == file.metadata.end() || (format->second != "dptrain-weights" && format->second != "dptrain-checkpoint"))
    throw InputError(path, "not a dptrain weights file or checkpoint (no dptrain 'format' in the metadata)");
  return file;
}

}  // namespace dptrain
