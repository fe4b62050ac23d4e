// Fused CPU kernels for mindcv_ext, loaded by MindSpore's ops.Custom(func_type="aot").
//
// MindSpore 2.10's CPU backend runs the exact GELU as five separate operators (each a full pass over
// memory, Erf itself scalar) and the LayerNorm gradient in a slow kernel. These functions do each in one
// vectorised, multi-threaded pass. They are an optional fast path for float32 on CPU; every caller keeps
// the standard operators for other dtypes, other backends and exported graphs.
//
// Signature fixed by MindSpore's AOT interface: params holds the inputs then the outputs.
#include <cstdint>
#include <cstring>
#include <vector>

#include <omp.h>

// glibc's vector erff/expf (libmvec, glibc >= 2.35), declared here rather than through <cmath> under
// -ffast-math: linking a shared library with -ffast-math would flush denormals to zero in the whole process.
extern "C" float erff(float) __attribute__((simd("notinbranch")));
extern "C" float expf(float) __attribute__((simd("notinbranch")));

namespace {

constexpr float kSqrtHalf = 0.70710678118654752f;
constexpr float kInvSqrt2Pi = 0.39894228040143268f;

int64_t NumElements(int ndim, const int64_t *shape) {
  int64_t n = 1;
  for (int i = 0; i < ndim; ++i) n *= shape[i];
  return n;
}

bool AllFloat32(int nparam, const char **dtypes) {
  for (int i = 0; i < nparam; ++i) {
    if (std::strcmp(dtypes[i], "float32") != 0 && std::strcmp(dtypes[i], "float") != 0) return false;
  }
  return true;
}

// GELU and its derivative, written once for every kernel; inlined into their vectorised loops.
#pragma omp declare simd notinbranch
inline float GeluValue(float v) { return 0.5f * v * (1.0f + erff(v * kSqrtHalf)); }

#pragma omp declare simd notinbranch
inline float GeluSlope(float v) { return 0.5f * (1.0f + erff(v * kSqrtHalf)) + v * kInvSqrt2Pi * expf(-0.5f * v * v); }

}  // namespace

// y = 0.5 * x * (1 + erf(x / sqrt(2)))            params: x, y
extern "C" int GeluForward(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                           void *stream, void *extra) {
  if (nparam != 2 || !AllFloat32(nparam, dtypes)) return 1;
  const float *x = static_cast<const float *>(params[0]);
  float *y = static_cast<float *>(params[1]);
  const int64_t n = NumElements(ndims[0], shapes[0]);
#pragma omp parallel for simd schedule(static)
  for (int64_t i = 0; i < n; ++i) y[i] = GeluValue(x[i]);
  return 0;
}

// dx = dy * (Phi(x) + x * phi(x))                  params: x, dy, dx
extern "C" int GeluBackward(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                            void *stream, void *extra) {
  if (nparam != 3 || !AllFloat32(nparam, dtypes)) return 1;
  const float *x = static_cast<const float *>(params[0]);
  const float *dy = static_cast<const float *>(params[1]);
  float *dx = static_cast<float *>(params[2]);
  const int64_t n = NumElements(ndims[0], shapes[0]);
#pragma omp parallel for simd schedule(static)
  for (int64_t i = 0; i < n; ++i) dx[i] = dy[i] * GeluSlope(x[i]);
  return 0;
}

// Bias, GELU and the regrouping between two Monarch layers in one pass (layers/monarch.py, monarch_mlp):
//   z[kk, b, ll, cc] = gelu(y[ll, b, kk, cc] + bias[ll, kk, cc])
// params: y (l, B, k, c), bias (l, k, c), z (k, B, l, c)
extern "C" int BiasGeluRegroupForward(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                                      void *stream, void *extra) {
  if (nparam != 3 || ndims[0] != 4 || !AllFloat32(nparam, dtypes)) return 1;
  const float *y = static_cast<const float *>(params[0]);
  const float *bias = static_cast<const float *>(params[1]);
  float *z = static_cast<float *>(params[2]);
  const int64_t l = shapes[0][0], batch = shapes[0][1], k = shapes[0][2], c = shapes[0][3];
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t ll = 0; ll < l; ++ll) {
    for (int64_t b = 0; b < batch; ++b) {
      const float *src = y + (ll * batch + b) * k * c;
      for (int64_t kk = 0; kk < k; ++kk) {
        const float *row = src + kk * c;
        const float *shift = bias + (ll * k + kk) * c;
        float *dst = z + ((kk * batch + b) * l + ll) * c;
#pragma omp simd
        for (int64_t cc = 0; cc < c; ++cc) dst[cc] = GeluValue(row[cc] + shift[cc]);
      }
    }
  }
  return 0;
}

// g = dz[kk, b, ll, cc] * gelu'(y + bias);  dy[ll, b, kk, cc] = g;  dbias[ll, kk, cc] = sum_b g
// params: y, bias, dz, dy, dbias
extern "C" int BiasGeluRegroupBackward(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                                       void *stream, void *extra) {
  if (nparam != 5 || ndims[0] != 4 || !AllFloat32(nparam, dtypes)) return 1;
  const float *y = static_cast<const float *>(params[0]);
  const float *bias = static_cast<const float *>(params[1]);
  const float *dz = static_cast<const float *>(params[2]);
  float *dy = static_cast<float *>(params[3]);
  float *dbias = static_cast<float *>(params[4]);
  const int64_t l = shapes[0][0], batch = shapes[0][1], k = shapes[0][2], c = shapes[0][3];
  const int64_t bias_size = l * k * c;
  // One partial bias gradient per thread, summed at the end: no atomics, and the order of the sum is fixed.
  std::vector<float> partial(static_cast<size_t>(omp_get_max_threads()) * bias_size, 0.0f);
  int used_threads = 1;
#pragma omp parallel
  {
#pragma omp single
    used_threads = omp_get_num_threads();
    float *acc = partial.data() + omp_get_thread_num() * bias_size;
#pragma omp for collapse(2) schedule(static)
    for (int64_t ll = 0; ll < l; ++ll) {
      for (int64_t b = 0; b < batch; ++b) {
        const int64_t offset = (ll * batch + b) * k * c;
        for (int64_t kk = 0; kk < k; ++kk) {
          const float *row = y + offset + kk * c;
          const float *shift = bias + (ll * k + kk) * c;
          const float *grad = dz + ((kk * batch + b) * l + ll) * c;
          float *out = dy + offset + kk * c;
          float *sum = acc + (ll * k + kk) * c;
#pragma omp simd
          for (int64_t cc = 0; cc < c; ++cc) {
            const float g = grad[cc] * GeluSlope(row[cc] + shift[cc]);
            out[cc] = g;
            sum[cc] += g;
          }
        }
      }
    }
  }
  for (int64_t i = 0; i < bias_size; ++i) {
    float total = 0.0f;
    for (int t = 0; t < used_threads; ++t) total += partial[t * bias_size + i];
    dbias[i] = total;
  }
  return 0;
}
