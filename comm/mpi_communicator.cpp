#include "comm/mpi_communicator.h"

#include <algorithm>
#include <climits>
#include <stdexcept>
#include <string>

#include "comm/bootstrap.h"
#include "comm/mpi_check.h"
#if DPTRAIN_HAVE_CUDA
#include <cuda_runtime.h>

#include "core/cuda_check.h"
#endif

namespace dptrain {

namespace {

// MPI counts are int: larger spans go in pieces (a 2^31-float gradient is 8 GiB, but cheap to honour).
constexpr size_t kMaxMpiCount = static_cast<size_t>(INT_MAX) / 2;

MPI_Op mpi_op(ReduceOp op) {
  switch (op) {
    case ReduceOp::Sum: return MPI_SUM;
    case ReduceOp::Max: return MPI_MAX;
    case ReduceOp::Min: return MPI_MIN;
  }
  throw std::logic_error("unknown ReduceOp");
}

}  // namespace

#if DPTRAIN_HAVE_CUDA
void MpiCommunicator::PinnedDeleter::operator()(float* p) const noexcept { (void)cudaFreeHost(p); }
#else
void MpiCommunicator::PinnedDeleter::operator()(float*) const noexcept {}  // nothing is staged (below)
#endif

MpiCommunicator::MpiCommunicator(const MpiSession& session, Device device)
    : rank_(session.rank()), size_(session.size()), device_(device) {
  MPI_CHECK(MPI_Comm_dup(MPI_COMM_WORLD, &comm_));
  MPI_CHECK(MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN));
}

MpiCommunicator::~MpiCommunicator() {
  // Freeing after MPI_Finalize is an error; an MpiSession outliving us is the contract, but a
  // destructor must not turn a misuse into a crash during unwinding.
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (!finalized && comm_ != MPI_COMM_NULL) MPI_Comm_free(&comm_);
}

#if DPTRAIN_HAVE_CUDA

bool MpiCommunicator::is_device_pointer(const float* p) const {
  if (device_ == Device::Cpu) return false;
  cudaPointerAttributes attr{};
  CUDA_CHECK(cudaPointerGetAttributes(&attr, p));
  return attr.type == cudaMemoryTypeDevice || attr.type == cudaMemoryTypeManaged;
}

void MpiCommunicator::reserve_staging(size_t count) {
  if (device_ == Device::Cpu || count <= staging_count_) return;
  staging_.reset();
  staging_count_ = 0;
  float* p = nullptr;
  CUDA_CHECK(cudaMallocHost(&p, count * sizeof(float)));
  staging_.reset(p);
  staging_count_ = count;
}

template <typename HostOp>
void MpiCommunicator::on_host(std::span<float> data, cudaStream_t stream, HostOp host_op) {
  if (data.empty()) return;
  if (!is_device_pointer(data.data())) {
    host_op(data);
    return;
  }
  reserve_staging(data.size());
  std::span<float> host(staging_.get(), data.size());
  const size_t bytes = data.size_bytes();
  CUDA_CHECK(cudaMemcpyAsync(host.data(), data.data(), bytes, cudaMemcpyDeviceToHost, stream));
  CUDA_CHECK(cudaStreamSynchronize(stream));
  host_op(host);
  CUDA_CHECK(cudaMemcpyAsync(data.data(), host.data(), bytes, cudaMemcpyHostToDevice, stream));
  // Synchronise again: the next call may come on another stream and overwrite the staging buffer
  // while this copy still reads it. This path is for debugging; speed is not its point.
  CUDA_CHECK(cudaStreamSynchronize(stream));
}

#else  // a CPU-only build: spans are host memory; a Device::Cuda communicator refuses on first use

bool MpiCommunicator::is_device_pointer(const float*) const {
  if (device_ == Device::Cpu) return false;
  throw_built_without_cuda();
}

void MpiCommunicator::reserve_staging(size_t) {
  if (device_ != Device::Cpu) throw_built_without_cuda();
}

template <typename HostOp>
void MpiCommunicator::on_host(std::span<float> data, cudaStream_t, HostOp host_op) {
  if (!data.empty() && !is_device_pointer(data.data())) host_op(data);
}

#endif

void MpiCommunicator::reduce_then_broadcast(std::span<float> data) {
  for (size_t off = 0; off < data.size(); off += kMaxMpiCount) {
    const int n = static_cast<int>(std::min(kMaxMpiCount, data.size() - off));
    float* p = data.data() + off;
    MPI_CHECK(MPI_Reduce(rank_ == 0 ? MPI_IN_PLACE : p, p, n, MPI_FLOAT, MPI_SUM, 0, comm_));
    MPI_CHECK(MPI_Bcast(p, n, MPI_FLOAT, 0, comm_));
  }
}

void MpiCommunicator::broadcast_host(std::span<float> data, int root) {
  for (size_t off = 0; off < data.size(); off += kMaxMpiCount) {
    const int n = static_cast<int>(std::min(kMaxMpiCount, data.size() - off));
    MPI_CHECK(MPI_Bcast(data.data() + off, n, MPI_FLOAT, root, comm_));
  }
}

void MpiCommunicator::all_reduce_sum(std::span<float> data, cudaStream_t stream) {
  if (size_ == 1) return;
  on_host(data, stream, [this](std::span<float> host) { reduce_then_broadcast(host); });
}

void MpiCommunicator::broadcast(std::span<float> data, int root, cudaStream_t stream) {
  if (root < 0 || root >= size_)
    throw std::invalid_argument("broadcast root " + std::to_string(root) + " outside [0, " +
                                std::to_string(size_) + ")");
  if (size_ == 1) return;
  on_host(data, stream, [this, root](std::span<float> host) { broadcast_host(host, root); });
}

double MpiCommunicator::all_reduce_scalar(double value, ReduceOp op) {
  // Same reduce-then-broadcast as the spans: a stop decision taken from a summed metric must come
  // out the same on every rank, to the bit.
  double result = value;
  MPI_CHECK(MPI_Reduce(rank_ == 0 ? MPI_IN_PLACE : &result, &result, 1, MPI_DOUBLE, mpi_op(op), 0, comm_));
  MPI_CHECK(MPI_Bcast(&result, 1, MPI_DOUBLE, 0, comm_));
  return result;
}

void MpiCommunicator::barrier() { MPI_CHECK(MPI_Barrier(comm_)); }

void MpiCommunicator::broadcast_bytes(std::string& bytes, int root) {
  if (root < 0 || root >= size_)
    throw std::invalid_argument("broadcast root " + std::to_string(root) + " outside [0, " +
                                std::to_string(size_) + ")");
  if (size_ == 1) return;
  // The length first, so that every rank sizes its buffer; then the bytes in MPI-sized pieces.
  uint64_t length = bytes.size();
  MPI_CHECK(MPI_Bcast(&length, 1, MPI_UINT64_T, root, comm_));
  bytes.resize(length);
  for (size_t off = 0; off < length; off += kMaxMpiCount) {
    const int n = static_cast<int>(std::min<size_t>(kMaxMpiCount, length - off));
    MPI_CHECK(MPI_Bcast(bytes.data() + off, n, MPI_CHAR, root, comm_));
  }
}

}  // namespace dptrain
