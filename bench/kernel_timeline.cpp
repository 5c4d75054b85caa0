// A CUPTI injection library that records when every kernel, memset and memcpy of a process ran on
// the GPU, including those replayed from CUDA graphs, with their streams: the timeline Nsight
// Systems would draw, for machines that have no nsys. Use:
//   KERNEL_TIMELINE_OUT=t.tsv CUDA_INJECTION64_PATH=libdptrain_kernel_timeline.so dptrain bench ...
// then bench/timeline_report.py t.tsv. Rows: kind, start ns, end ns, stream, graph, graph node, name.
#include <cupti.h>
#include <cxxabi.h>

#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <string>
#include <vector>

namespace {

constexpr size_t kBufferBytes = size_t{16} << 20;

struct Row {
  const char* kind;
  uint64_t start, end;
  uint32_t stream, graph;
  uint64_t node;
  std::string name;
};

std::mutex rows_mutex;
std::vector<Row> rows;
CUpti_SubscriberHandle subscriber;

std::string demangled(const char* name) {
  int status = 0;
  char* d = abi::__cxa_demangle(name, nullptr, nullptr, &status);
  std::string out = status == 0 && d ? d : name;
  std::free(d);
  return out;
}

void check(CUptiResult r, const char* what) {
  if (r == CUPTI_SUCCESS) return;
  const char* text = nullptr;
  cuptiGetResultString(r, &text);
  std::fprintf(stderr, "kernel_timeline: %s failed: %s\n", what, text ? text : "?");
}

void CUPTIAPI buffer_requested(uint8_t** buffer, size_t* size, size_t* max_records) {
  *buffer = static_cast<uint8_t*>(std::aligned_alloc(8, kBufferBytes));
  *size = kBufferBytes;
  *max_records = 0;
}

void CUPTIAPI buffer_completed(CUcontext, uint32_t, uint8_t* buffer, size_t, size_t valid) {
  std::vector<Row> batch;
  CUpti_Activity* record = nullptr;
  while (cuptiActivityGetNextRecord(buffer, valid, &record) == CUPTI_SUCCESS) {
    switch (record->kind) {
      case CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL:
      case CUPTI_ACTIVITY_KIND_KERNEL: {
        const auto* k = reinterpret_cast<const CUpti_ActivityKernel10*>(record);
        batch.push_back({"kernel", k->start, k->end, k->streamId, k->graphId, k->graphNodeId, demangled(k->name ? k->name : "?")});
        break;
      }
      case CUPTI_ACTIVITY_KIND_MEMSET: {
        const auto* m = reinterpret_cast<const CUpti_ActivityMemset4*>(record);
        batch.push_back({"memset", m->start, m->end, m->streamId, m->graphId, m->graphNodeId,
                         "memset " + std::to_string(m->bytes)});
        break;
      }
      case CUPTI_ACTIVITY_KIND_MEMCPY: {
        const auto* m = reinterpret_cast<const CUpti_ActivityMemcpy6*>(record);
        batch.push_back({"memcpy", m->start, m->end, m->streamId, m->graphId, m->graphNodeId,
                         "memcpy kind " + std::to_string(m->copyKind) + " " + std::to_string(m->bytes)});
        break;
      }
      default: break;
    }
  }
  std::free(buffer);
  const std::lock_guard<std::mutex> lock(rows_mutex);
  for (Row& r : batch) rows.push_back(std::move(r));
}

void write_rows() {
  check(cuptiActivityFlushAll(1), "cuptiActivityFlushAll");
  const char* path = std::getenv("KERNEL_TIMELINE_OUT");
  FILE* f = std::fopen(path ? path : "kernel_timeline.tsv", "w");
  if (!f) return std::perror("kernel_timeline: cannot write the timeline");
  const std::lock_guard<std::mutex> lock(rows_mutex);
  for (const Row& r : rows)
    std::fprintf(f, "%s\t%llu\t%llu\t%u\t%u\t%llu\t%s\n", r.kind, static_cast<unsigned long long>(r.start),
                 static_cast<unsigned long long>(r.end), r.stream, r.graph, static_cast<unsigned long long>(r.node),
                 r.name.c_str());
  std::fclose(f);
}

// Records still buffered belong to a context: deliver them before it goes.
void CUPTIAPI on_resource(void*, CUpti_CallbackDomain, CUpti_CallbackId id, const void*) {
  if (id == CUPTI_CBID_RESOURCE_CONTEXT_DESTROY_STARTING) cuptiActivityFlushAll(0);
}

}  // namespace

extern "C" int InitializeInjection() {
  check(cuptiActivityRegisterCallbacks(buffer_requested, buffer_completed), "cuptiActivityRegisterCallbacks");
  check(cuptiActivityEnable(CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL), "enable kernels");
  check(cuptiActivityEnable(CUPTI_ACTIVITY_KIND_MEMSET), "enable memsets");
  check(cuptiActivityEnable(CUPTI_ACTIVITY_KIND_MEMCPY), "enable memcpys");
  check(cuptiSubscribe(&subscriber, reinterpret_cast<CUpti_CallbackFunc>(on_resource), nullptr), "cuptiSubscribe");
  check(cuptiEnableCallback(1, subscriber, CUPTI_CB_DOMAIN_RESOURCE, CUPTI_CBID_RESOURCE_CONTEXT_DESTROY_STARTING),
        "cuptiEnableCallback");
  std::atexit(write_rows);
  return 1;
}
