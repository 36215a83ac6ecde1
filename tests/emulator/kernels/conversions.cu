// conversions.cu - test-only kernels: common.cuh's load/store conversions (Num<T>) over arrays.
// One thread per element; reads n elements of the input type, writes n of the output type.
#include "common.cuh"

template <typename T>
__global__ void load_kernel(const T* __restrict__ in, float* __restrict__ out, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = Num<T>::load(in[i]);
}

template <typename T>
__global__ void store_kernel(const float* __restrict__ in, T* __restrict__ out, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = Num<T>::store(in[i]);
}
