// Small RAII wrappers and shape helpers for cuDNN's legacy (descriptor) API, shared by the
// convolution and pooling kernels.
#pragma once

#include <cudnn.h>

#include <climits>
#include <string>
#include <vector>

#include "ir/dims.h"
#include "ir/dtype.h"
#include "kernels/cuda/cuda_check.h"

namespace kiln {

template <typename T, cudnnStatus_t (*Create)(T*), cudnnStatus_t (*Destroy)(T)>
class CudnnDescriptor {
 public:
  CudnnDescriptor() { KILN_CUDNN_CHECK(Create(&desc_)); }
  ~CudnnDescriptor() { Destroy(desc_); }
  CudnnDescriptor(const CudnnDescriptor&) = delete;
  CudnnDescriptor& operator=(const CudnnDescriptor&) = delete;
  T get() const { return desc_; }

 private:
  T desc_ = nullptr;
};

using TensorDescriptor =
    CudnnDescriptor<cudnnTensorDescriptor_t, cudnnCreateTensorDescriptor, cudnnDestroyTensorDescriptor>;
using FilterDescriptor =
    CudnnDescriptor<cudnnFilterDescriptor_t, cudnnCreateFilterDescriptor, cudnnDestroyFilterDescriptor>;
using ConvolutionDescriptor = CudnnDescriptor<cudnnConvolutionDescriptor_t, cudnnCreateConvolutionDescriptor,
                                              cudnnDestroyConvolutionDescriptor>;
using ActivationDescriptor = CudnnDescriptor<cudnnActivationDescriptor_t, cudnnCreateActivationDescriptor,
                                             cudnnDestroyActivationDescriptor>;
using PoolingDescriptor =
    CudnnDescriptor<cudnnPoolingDescriptor_t, cudnnCreatePoolingDescriptor, cudnnDestroyPoolingDescriptor>;

inline cudnnDataType_t cudnn_type(DataType t, const std::string& who) {
  switch (t) {
    case DataType::kFloat32:
      return CUDNN_DATA_FLOAT;
    case DataType::kFloat16:
      return CUDNN_DATA_HALF;
    case DataType::kBFloat16:
      return CUDNN_DATA_BFLOAT16;
    default:
      KILN_FAIL(who << ": no cuDNN path for dtype " << dtype_name(t));
  }
}

// cuDNN wants at least 4 dims: a 1d layout [N, C, W] becomes [N, C, 1, W]. Dims must fit an int.
inline std::vector<int> cudnn_dims(const Dims& d, const std::string& who) {
  std::vector<int> r;
  for (int64_t x : d) {
    KILN_CHECK(x >= 0 && x <= INT_MAX, who << ": dim of " << to_string(d) << " is too large for cuDNN");
    r.push_back(static_cast<int>(x));
  }
  if (r.size() == 3) r.insert(r.begin() + 2, 1);
  return r;
}

// Per-spatial-dim values widened like cudnn_dims: one spatial dim gets a leading `fill`.
inline std::vector<int> cudnn_spatial(const std::vector<int64_t>& v, int fill) {
  std::vector<int> r(v.begin(), v.end());
  if (r.size() == 1) r.insert(r.begin(), fill);
  return r;
}

// A packed (row-major) tensor descriptor.
inline void set_packed(const TensorDescriptor& desc, cudnnDataType_t type, const std::vector<int>& dims,
                       const std::string& who) {
  std::vector<int> strides(dims.size(), 1);
  int64_t s = 1;
  for (int i = static_cast<int>(dims.size()) - 1; i >= 0; --i) {
    KILN_CHECK(s <= INT_MAX, who << ": tensor is too large for cuDNN's 32-bit strides");
    strides[i] = static_cast<int>(s);
    s *= dims[i];
  }
  KILN_CUDNN_CHECK(cudnnSetTensorNdDescriptor(desc.get(), type, static_cast<int>(dims.size()), dims.data(),
                                              strides.data()));
}

// A tensor descriptor for canonical dims [N, C, spatial...] (as cudnn_dims gives them) stored
// channels last, [N, spatial..., C].
inline void set_channels_last(const TensorDescriptor& desc, cudnnDataType_t type,
                              const std::vector<int>& dims, const std::string& who) {
  const int r = static_cast<int>(dims.size());
  std::vector<int64_t> strides(dims.size(), 1);
  int64_t s = dims[1];
  for (int i = r - 1; i >= 2; --i) {
    strides[i] = s;
    s *= dims[i];
  }
  strides[0] = s;
  KILN_CHECK(s <= INT_MAX, who << ": tensor is too large for cuDNN's 32-bit strides");
  std::vector<int> st(strides.begin(), strides.end());
  KILN_CUDNN_CHECK(cudnnSetTensorNdDescriptor(desc.get(), type, r, dims.data(), st.data()));
}

}  // namespace kiln
