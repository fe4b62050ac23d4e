// Fused CPU kernels for mindcv_ext, loaded by MindSpore's ops.Custom(func_type="aot").
//
// MindSpore 2.10's CPU backend runs the exact GELU as five separate operators (each a full pass over
// memory, Erf itself scalar) and the LayerNorm gradient in a slow kernel. These functions do each in one
// vectorised, multi-threaded pass. They are an optional fast path for float32 on CPU; every caller keeps
// the standard operators for other dtypes, other backends and exported graphs.
//
// Signature fixed by MindSpore's AOT interface: params holds the inputs then the outputs.
//
// Threads come from a small pool of our own whose idle workers sleep. OpenMP's threads would spin after each
// kernel (libgomp's default wait policy, fixed when MindSpore loads it) and take the cores from MindSpore's
// own thread pool: a gMLP block then ran 1.6x slower. "omp simd" pragmas only vectorise (-fopenmp-simd).
#include <pthread.h>
#include <sched.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

// glibc's vector erff/expf (libmvec, glibc >= 2.35), declared here rather than through <cmath> under
// -ffast-math: linking a shared library with -ffast-math would flush denormals to zero in the whole process.
extern "C" float erff(float) __attribute__((simd("notinbranch")));
extern "C" float expf(float) __attribute__((simd("notinbranch")));

namespace {

// Runs job(part, parts) on `parts` threads (the caller is part 0) and returns when all are done. Calls from
// several threads at once take turns. A forked child starts a new pool (the parent's workers are not in it).
class ThreadPool {
 public:
  static ThreadPool &Get() {
    std::lock_guard<std::mutex> guard(instance_mutex_);
    if (instance_ == nullptr) {
      instance_ = new ThreadPool();  // never destroyed: detached workers may outlive static destructors
      static const int registered = pthread_atfork(nullptr, nullptr, [] { instance_ = nullptr; });
      (void)registered;
    }
    return *instance_;
  }
  int Size() const { return static_cast<int>(workers_.size()) + 1; }

  void Run(const std::function<void(int, int)> &job) {
    const int parts = Size();
    if (parts == 1) return job(0, 1);
    std::lock_guard<std::mutex> turn(run_mutex_);
    std::unique_lock<std::mutex> lock(mutex_);
    job_ = &job;
    pending_ = parts - 1;
    ++generation_;
    start_.notify_all();
    lock.unlock();
    job(0, parts);
    lock.lock();
    done_.wait(lock, [this] { return pending_ == 0; });
    job_ = nullptr;
  }

 private:
  ThreadPool() {
    cpu_set_t cpus;
    int count = static_cast<int>(std::thread::hardware_concurrency());
    if (sched_getaffinity(0, sizeof(cpus), &cpus) == 0) count = CPU_COUNT(&cpus);
    for (int part = 1; part < std::max(count, 1); ++part) workers_.emplace_back([this, part] { Work(part); });
    for (auto &worker : workers_) worker.detach();
  }

  void Work(int part) {
    uint64_t seen = 0;
    for (;;) {
      std::unique_lock<std::mutex> lock(mutex_);
      start_.wait(lock, [&] { return generation_ != seen; });
      seen = generation_;
      const std::function<void(int, int)> *job = job_;
      const int parts = Size();
      lock.unlock();
      (*job)(part, parts);
      lock.lock();
      if (--pending_ == 0) done_.notify_one();
    }
  }

  static inline ThreadPool *instance_ = nullptr;
  static inline std::mutex instance_mutex_;
  std::vector<std::thread> workers_;
  std::mutex run_mutex_, mutex_;
  std::condition_variable start_, done_;
  const std::function<void(int, int)> *job_ = nullptr;
  int pending_ = 0;
  uint64_t generation_ = 0;
};

// body(part, begin, end) over [0, n) in one contiguous range per thread.
template <typename Body>
void ParallelFor(int64_t n, Body body) {
  ThreadPool::Get().Run([&](int part, int parts) {
    const int64_t begin = n * part / parts, end = n * (part + 1) / parts;
    if (begin < end) body(part, begin, end);
  });
}

int NumParts() { return ThreadPool::Get().Size(); }

// Partial sums, one row of `size` per thread, added in a fixed order (no atomics; deterministic).
void SumParts(const std::vector<float> &partial, int64_t size, float *total) {
  for (int64_t i = 0; i < size; ++i) {
    float sum = 0.0f;
    for (int t = 0; t < NumParts(); ++t) sum += partial[t * size + i];
    total[i] = sum;
  }
}

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

// Backward of gelu(y + bias) regrouped: g = dz * gelu'(y + bias) is written to dy in y's (l, B, k, c) order and
// summed over B into dbias. grad_at(ll, b, kk) gives the row of the regrouped output's gradient. One partial
// bias gradient per thread, summed at the end: no atomics, and the order of the sum is fixed.
template <typename GradAt>
void BiasGeluRegroupedBackward(const float *y, const float *bias, float *dy, float *dbias, int64_t l, int64_t batch,
                               int64_t k, int64_t c, GradAt grad_at) {
  const int64_t bias_size = l * k * c;
  std::vector<float> partial(static_cast<size_t>(NumParts()) * bias_size, 0.0f);
  ParallelFor(l * batch, [&](int part, int64_t begin, int64_t end) {
    float *acc = partial.data() + part * bias_size;
    for (int64_t row_index = begin; row_index < end; ++row_index) {
      const int64_t ll = row_index / batch, b = row_index % batch;
      const int64_t offset = row_index * k * c;
      for (int64_t kk = 0; kk < k; ++kk) {
        const float *row = y + offset + kk * c;
        const float *shift = bias + (ll * k + kk) * c;
        const float *grad = grad_at(ll, b, kk);
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
  });
  SumParts(partial, bias_size, dbias);
}

}  // namespace

// y = 0.5 * x * (1 + erf(x / sqrt(2)))            params: x, y
extern "C" int GeluForward(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                           void *stream, void *extra) {
  if (nparam != 2 || !AllFloat32(nparam, dtypes)) return 1;
  const float *x = static_cast<const float *>(params[0]);
  float *y = static_cast<float *>(params[1]);
  const int64_t n = NumElements(ndims[0], shapes[0]);
  ParallelFor(n, [&](int, int64_t begin, int64_t end) {
#pragma omp simd
    for (int64_t i = begin; i < end; ++i) y[i] = GeluValue(x[i]);
  });
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
  ParallelFor(n, [&](int, int64_t begin, int64_t end) {
#pragma omp simd
    for (int64_t i = begin; i < end; ++i) dx[i] = dy[i] * GeluSlope(x[i]);
  });
  return 0;
}

// Bias, GELU and the regrouping between two Monarch layers in one pass (accel/fused.py, monarch_mlp):
//   z[kk, b, ll, cc] = gelu(y[ll, b, kk, cc] + bias[ll, kk, cc])
// params: y (l, B, k, c), bias (l, k, c), z (k, B, l, c)
extern "C" int BiasGeluRegroupForward(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                                      void *stream, void *extra) {
  if (nparam != 3 || ndims[0] != 4 || !AllFloat32(nparam, dtypes)) return 1;
  const float *y = static_cast<const float *>(params[0]);
  const float *bias = static_cast<const float *>(params[1]);
  float *z = static_cast<float *>(params[2]);
  const int64_t l = shapes[0][0], batch = shapes[0][1], k = shapes[0][2], c = shapes[0][3];
  ParallelFor(l * batch, [&](int, int64_t begin, int64_t end) {
    for (int64_t row_index = begin; row_index < end; ++row_index) {
      const int64_t ll = row_index / batch, b = row_index % batch;
      const float *src = y + row_index * k * c;
      for (int64_t kk = 0; kk < k; ++kk) {
        const float *row = src + kk * c;
        const float *shift = bias + (ll * k + kk) * c;
        float *dst = z + ((kk * batch + b) * l + ll) * c;
#pragma omp simd
        for (int64_t cc = 0; cc < c; ++cc) dst[cc] = GeluValue(row[cc] + shift[cc]);
      }
    }
  });
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
  BiasGeluRegroupedBackward(y, bias, dy, dbias, l, batch, k, c, [=](int64_t ll, int64_t b, int64_t kk) {
    return dz + ((kk * batch + b) * l + ll) * c;
  });
  return 0;
}

// The same for a gated MLP (gMLP): fc1's output halves become the gate's two inputs, token-major, so the
// gating unit needs no transposes (accel/fused.py, monarch_gated_mlp):
//   u[b, kk, ll, cc] = gelu(y[ll, b, kk, cc] + bias[ll, kk, cc])        kk <  k/2
//   v[b, kk - k/2, ll, cc] = the same                                   kk >= k/2
// params: y (l, B, k, c), bias (l, k, c), u (B, k/2, l, c), v (B, k/2, l, c)
extern "C" int BiasGeluSplitForward(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                                    void *stream, void *extra) {
  if (nparam != 4 || ndims[0] != 4 || shapes[0][2] % 2 != 0 || !AllFloat32(nparam, dtypes)) return 1;
  const float *y = static_cast<const float *>(params[0]);
  const float *bias = static_cast<const float *>(params[1]);
  float *halves[2] = {static_cast<float *>(params[2]), static_cast<float *>(params[3])};
  const int64_t l = shapes[0][0], batch = shapes[0][1], k = shapes[0][2], c = shapes[0][3], half = k / 2;
  ParallelFor(batch * l, [&](int, int64_t begin, int64_t end) {
    for (int64_t token_index = begin; token_index < end; ++token_index) {
      const int64_t b = token_index / l, ll = token_index % l;
      const float *src = y + (ll * batch + b) * k * c;
      for (int64_t kk = 0; kk < k; ++kk) {
        const float *row = src + kk * c;
        const float *shift = bias + (ll * k + kk) * c;
        float *dst = halves[kk / half] + ((b * half + kk % half) * l + ll) * c;
#pragma omp simd
        for (int64_t cc = 0; cc < c; ++cc) dst[cc] = GeluValue(row[cc] + shift[cc]);
      }
    }
  });
  return 0;
}

// params: y, bias, du, dv, dy (l, B, k, c), dbias (l, k, c)
extern "C" int BiasGeluSplitBackward(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                                     void *stream, void *extra) {
  if (nparam != 6 || ndims[0] != 4 || shapes[0][2] % 2 != 0 || !AllFloat32(nparam, dtypes)) return 1;
  const float *y = static_cast<const float *>(params[0]);
  const float *bias = static_cast<const float *>(params[1]);
  const float *grads[2] = {static_cast<const float *>(params[2]), static_cast<const float *>(params[3])};
  float *dy = static_cast<float *>(params[4]);
  float *dbias = static_cast<float *>(params[5]);
  const int64_t l = shapes[0][0], batch = shapes[0][1], k = shapes[0][2], c = shapes[0][3], half = k / 2;
  BiasGeluRegroupedBackward(y, bias, dy, dbias, l, batch, k, c, [=](int64_t ll, int64_t b, int64_t kk) {
    return grads[kk / half] + ((b * half + kk % half) * l + ll) * c;
  });
  return 0;
}

// Monarch's permutations (accel/cells.py, MonarchLinear), each one pass instead of MindSpore's one or two
// transposes, the slowest of which moves 4-float rows. Activations are block-major, (blocks, B, width): token b's
// features are the concatenation of its rows in every block. The two kernels are each other's inverse.
//
// A 2-D (B, n) tensor stands for one block (1, B, n): token-major.
namespace {

bool BlockShape(int ndim, const int64_t *shape, int64_t *blocks, int64_t *batch, int64_t *width) {
  if (ndim == 2) {
    *blocks = 1, *batch = shape[0], *width = shape[1];
    return true;
  }
  if (ndim != 3) return false;
  *blocks = shape[0], *batch = shape[1], *width = shape[2];
  return true;
}

}  // namespace

// ColumnsOfRows: x (R, B, C): token b's blocks are the rows of an R x C matrix; writes its columns one after the
// other (feature c*R + r), cut into y's blocks (m, B, n), m*n == R*C, plus bias[c*R + r] when given.
// params: x, [bias (R*C)], y
extern "C" int ColumnsOfRows(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                             void *stream, void *extra) {
  int64_t rows, batch, cols, blocks, out_batch, width;
  if ((nparam != 2 && nparam != 3) || !AllFloat32(nparam, dtypes) ||
      !BlockShape(ndims[0], shapes[0], &rows, &batch, &cols) ||
      !BlockShape(ndims[nparam - 1], shapes[nparam - 1], &blocks, &out_batch, &width))
    return 1;
  const float *x = static_cast<const float *>(params[0]);
  const float *bias = nparam == 3 ? static_cast<const float *>(params[1]) : nullptr;
  float *y = static_cast<float *>(params[nparam - 1]);
  if (out_batch != batch || blocks * width != rows * cols) return 1;
  ParallelFor(batch, [&](int, int64_t begin, int64_t end) {
    std::vector<float> token(rows * cols);
    for (int64_t b = begin; b < end; ++b) {
      for (int64_t r = 0; r < rows; ++r) {
        const float *src = x + (r * batch + b) * cols;
        for (int64_t c = 0; c < cols; ++c) token[c * rows + r] = src[c];
      }
      for (int64_t m = 0; m < blocks; ++m) {
        const float *src = token.data() + m * width;
        float *dst = y + (m * batch + b) * width;
        if (bias == nullptr) {
          std::memcpy(dst, src, width * sizeof(float));
        } else {
          const float *shift = bias + m * width;
#pragma omp simd
          for (int64_t i = 0; i < width; ++i) dst[i] = src[i] + shift[i];
        }
      }
    }
  });
  return 0;
}

// ColumnsOfFlat: x (m, B, n): token b's features, in order, are an R x C matrix row by row; writes its columns
// as y's blocks (C, B, R). Given a bias (only its shape is read), it also sums x over the tokens into dbias: the
// backward of ColumnsOfRows with its bias.
// params: x, y  or  x, bias, y, dbias (m*n)
extern "C" int ColumnsOfFlat(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                             void *stream, void *extra) {
  const int out = nparam == 4 ? 2 : 1;
  int64_t blocks, batch, width, cols, out_batch, rows;
  if ((nparam != 2 && nparam != 4) || !AllFloat32(nparam, dtypes) ||
      !BlockShape(ndims[0], shapes[0], &blocks, &batch, &width) ||
      !BlockShape(ndims[out], shapes[out], &cols, &out_batch, &rows))
    return 1;
  const float *x = static_cast<const float *>(params[0]);
  float *y = static_cast<float *>(params[out]);
  float *dbias = nparam == 4 ? static_cast<float *>(params[3]) : nullptr;
  if (out_batch != batch || blocks * width != rows * cols) return 1;
  if (dbias != nullptr && NumElements(ndims[3], shapes[3]) != rows * cols) return 1;
  const int64_t size = rows * cols;
  std::vector<float> partial(dbias != nullptr ? static_cast<size_t>(NumParts()) * size : 0, 0.0f);
  ParallelFor(batch, [&](int part, int64_t begin, int64_t end) {
    std::vector<float> token(size);
    float *acc = dbias != nullptr ? partial.data() + part * size : nullptr;
    for (int64_t b = begin; b < end; ++b) {
      for (int64_t m = 0; m < blocks; ++m) {
        const float *src = x + (m * batch + b) * width;
        std::memcpy(token.data() + m * width, src, width * sizeof(float));
        if (acc != nullptr) {
          float *sum = acc + m * width;
#pragma omp simd
          for (int64_t i = 0; i < width; ++i) sum[i] += src[i];
        }
      }
      for (int64_t c = 0; c < cols; ++c) {
        float *dst = y + (c * batch + b) * rows;
        for (int64_t r = 0; r < rows; ++r) dst[r] = token[r * cols + c];
      }
    }
  });
  if (dbias != nullptr) SumParts(partial, size, dbias);
  return 0;
}

// gMLP's gate and the gather into fc2's first blocks in one pass (models/gmlp.py, SpatialGatingUnit): the bias
// add, the product and the transpose would each be a pass over the gate's output, forward and backward.
//   z[kk, r, qq] = u[r, kk, qq] * (p[r, kk, qq] + bias[r % T])
// params: u (R, k, q), p (R, k, q), bias (T), z (k, R, q)
extern "C" int GateToBlocksForward(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                                   void *stream, void *extra) {
  if (nparam != 4 || ndims[0] != 3 || ndims[2] != 1 || !AllFloat32(nparam, dtypes)) return 1;
  const float *u = static_cast<const float *>(params[0]);
  const float *p = static_cast<const float *>(params[1]);
  const float *bias = static_cast<const float *>(params[2]);
  float *z = static_cast<float *>(params[3]);
  const int64_t rows = shapes[0][0], k = shapes[0][1], q = shapes[0][2], tokens = shapes[2][0];
  if (tokens < 1 || rows % tokens != 0) return 1;
  ParallelFor(rows, [&](int, int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const float shift = bias[r % tokens];
      for (int64_t kk = 0; kk < k; ++kk) {
        const float *gate = u + (r * k + kk) * q;
        const float *projected = p + (r * k + kk) * q;
        float *dst = z + (kk * rows + r) * q;
#pragma omp simd
        for (int64_t qq = 0; qq < q; ++qq) dst[qq] = gate[qq] * (projected[qq] + shift);
      }
    }
  });
  return 0;
}

// du = dz * (p + bias);  dp = dz * u;  dbias[t] = sum of dp over the rows r with r % T == t
// params: u, p, bias, dz (k, R, q), du (R, k, q), dp (R, k, q), dbias (T)
extern "C" int GateToBlocksBackward(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                                    void *stream, void *extra) {
  if (nparam != 7 || ndims[0] != 3 || ndims[2] != 1 || !AllFloat32(nparam, dtypes)) return 1;
  const float *u = static_cast<const float *>(params[0]);
  const float *p = static_cast<const float *>(params[1]);
  const float *bias = static_cast<const float *>(params[2]);
  const float *dz = static_cast<const float *>(params[3]);
  float *du = static_cast<float *>(params[4]);
  float *dp = static_cast<float *>(params[5]);
  float *dbias = static_cast<float *>(params[6]);
  const int64_t rows = shapes[0][0], k = shapes[0][1], q = shapes[0][2], tokens = shapes[2][0];
  if (tokens < 1 || rows % tokens != 0) return 1;
  // One sum per row, added per token in a fixed order afterwards: deterministic whatever the threads.
  std::vector<float> row_sums(rows);
  ParallelFor(rows, [&](int, int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const float shift = bias[r % tokens];
      float sum = 0.0f;
      for (int64_t kk = 0; kk < k; ++kk) {
        const int64_t offset = (r * k + kk) * q;
        const float *grad = dz + (kk * rows + r) * q;
#pragma omp simd reduction(+ : sum)
        for (int64_t qq = 0; qq < q; ++qq) {
          const float g = grad[qq] * u[offset + qq];
          du[offset + qq] = grad[qq] * (p[offset + qq] + shift);
          dp[offset + qq] = g;
          sum += g;
        }
      }
      row_sums[r] = sum;
    }
  });
  for (int64_t t = 0; t < tokens; ++t) {
    float sum = 0.0f;
    for (int64_t r = t; r < rows; r += tokens) sum += row_sums[r];
    dbias[t] = sum;
  }
  return 0;
}

// LayerNorm over the last axis, forward and backward each one pass over the rows (MindSpore's CPU LayerNorm
// takes ~3 ms on a 1568x768 input and its gradient several operators). Statistics in float as MindSpore's:
// mean, then the variance of the centred row. eps arrives as a one-element tensor.
namespace {

inline void RowStatistics(const float *row, int64_t dim, float eps, float *mean, float *rstd) {
  float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
  for (int64_t i = 0; i < dim; ++i) sum += row[i];
  const float mu = sum / static_cast<float>(dim);
  float squares = 0.0f;
#pragma omp simd reduction(+ : squares)
  for (int64_t i = 0; i < dim; ++i) squares += (row[i] - mu) * (row[i] - mu);
  *mean = mu;
  *rstd = 1.0f / __builtin_sqrtf(squares / static_cast<float>(dim) + eps);
}

}  // namespace

// params: x (..., D), gamma (D), beta (D), eps (1), y (..., D)
extern "C" int LayerNormForward(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                                void *stream, void *extra) {
  if (nparam != 5 || !AllFloat32(nparam, dtypes)) return 1;
  const float *x = static_cast<const float *>(params[0]);
  const float *gamma = static_cast<const float *>(params[1]);
  const float *beta = static_cast<const float *>(params[2]);
  const float eps = *static_cast<const float *>(params[3]);
  float *y = static_cast<float *>(params[4]);
  const int64_t dim = shapes[0][ndims[0] - 1];
  const int64_t rows = NumElements(ndims[0], shapes[0]) / dim;
  ParallelFor(rows, [&](int, int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const float *row = x + r * dim;
      float *out = y + r * dim;
      float mean, rstd;
      RowStatistics(row, dim, eps, &mean, &rstd);
#pragma omp simd
      for (int64_t i = 0; i < dim; ++i) out[i] = (row[i] - mean) * rstd * gamma[i] + beta[i];
    }
  });
  return 0;
}

// dx = rstd * (g - mean(g) - xhat * mean(g * xhat)) with g = dy * gamma; dgamma = sum dy * xhat; dbeta = sum dy
// params: x, gamma, eps, dy, dx, dgamma, dbeta
extern "C" int LayerNormBackward(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                                 void *stream, void *extra) {
  if (nparam != 7 || !AllFloat32(nparam, dtypes)) return 1;
  const float *x = static_cast<const float *>(params[0]);
  const float *gamma = static_cast<const float *>(params[1]);
  const float eps = *static_cast<const float *>(params[2]);
  const float *dy = static_cast<const float *>(params[3]);
  float *dx = static_cast<float *>(params[4]);
  float *dgamma = static_cast<float *>(params[5]);
  float *dbeta = static_cast<float *>(params[6]);
  const int64_t dim = shapes[0][ndims[0] - 1];
  const int64_t rows = NumElements(ndims[0], shapes[0]) / dim;
  // Per-thread partial parameter gradients (gamma then beta), summed in a fixed order at the end.
  std::vector<float> partial(static_cast<size_t>(NumParts()) * 2 * dim, 0.0f);
  ParallelFor(rows, [&](int part, int64_t begin, int64_t end) {
    float *acc_gamma = partial.data() + part * 2 * dim;
    float *acc_beta = acc_gamma + dim;
    for (int64_t r = begin; r < end; ++r) {
      const float *row = x + r * dim;
      const float *grad = dy + r * dim;
      float *out = dx + r * dim;
      float mean, rstd;
      RowStatistics(row, dim, eps, &mean, &rstd);
      float sum_g = 0.0f, sum_gx = 0.0f;
#pragma omp simd reduction(+ : sum_g, sum_gx)
      for (int64_t i = 0; i < dim; ++i) {
        const float xhat = (row[i] - mean) * rstd;
        const float g = grad[i] * gamma[i];
        sum_g += g;
        sum_gx += g * xhat;
        acc_gamma[i] += grad[i] * xhat;
        acc_beta[i] += grad[i];
      }
      const float mean_g = sum_g / static_cast<float>(dim), mean_gx = sum_gx / static_cast<float>(dim);
#pragma omp simd
      for (int64_t i = 0; i < dim; ++i) {
        const float xhat = (row[i] - mean) * rstd;
        out[i] = rstd * (grad[i] * gamma[i] - mean_g - xhat * mean_gx);
      }
    }
  });
  std::vector<float> totals(2 * dim);
  SumParts(partial, 2 * dim, totals.data());
  std::copy(totals.begin(), totals.begin() + dim, dgamma);
  std::copy(totals.begin() + dim, totals.end(), dbeta);
  return 0;
}

// Monarch's batched matmuls through oneDNN's sgemm, the library MindSpore itself loads (libdnnl.so.3). On this
// kind of CPU, BatchMatMul reached ~150 GFLOP/s at Monarch's block shapes and sgemm, one block per thread, ~205.
// oneDNN is built for MindSpore's thread pool: called with none, as here, each sgemm runs on the calling thread,
// and the blocks and their rows are shared between our own threads. The first factor also reads its input
// token-major, block kk being columns [kk*p, (kk+1)*p) of each row (sgemm's leading dimension), so no kernel
// has to cut it into blocks first.
#include <dlfcn.h>

namespace {

using Sgemm = int (*)(char transa, char transb, int64_t m, int64_t n, int64_t k, float alpha, const float *a,
                      int64_t lda, const float *b, int64_t ldb, float beta, float *c, int64_t ldc);

// dnnl_sgemm from the copy MindSpore has loaded, or nullptr (then the kernels fail and say so by their status).
Sgemm FindSgemm() {
  static const Sgemm sgemm = [] {
    void *library = dlopen("libdnnl.so.3", RTLD_NOW | RTLD_NOLOAD);
    return library == nullptr ? nullptr : reinterpret_cast<Sgemm>(dlsym(library, "dnnl_sgemm"));
  }();
  return sgemm;
}

// Layout of the matmul's activation: block kk, row b starts at data + kk * block_stride + b * row_stride.
struct Blocks {
  int64_t blocks, batch, width, block_stride, row_stride;
};

// x (k, B, p) block-major, or (B, k*p) token-major when `blocks` (the weight's) is given for a 2-D x.
bool ActivationBlocks(int ndim, const int64_t *shape, int64_t blocks, Blocks *out) {
  if (ndim == 3 && shape[0] == blocks) {
    *out = {blocks, shape[1], shape[2], shape[1] * shape[2], shape[2]};
    return true;
  }
  if (ndim == 2 && shape[1] % blocks == 0) {
    *out = {blocks, shape[0], shape[1] / blocks, shape[1] / blocks, shape[1]};
    return true;
  }
  return false;
}

// gemm(block, begin, end) for rows [begin, end) of every block, the blocks x rows shared evenly between threads
// (whole blocks each when they divide evenly, as for nblocks 4 on 2 cores).
template <typename Gemm>
void OverBlockRows(int64_t blocks, int64_t rows, Gemm gemm) {
  ThreadPool::Get().Run([&](int part, int parts) {
    const int64_t total = blocks * rows, begin = total * part / parts, end = total * (part + 1) / parts;
    for (int64_t unit = begin; unit < end;) {
      const int64_t block = unit / rows, first = unit % rows, stop = std::min(end - block * rows, rows);
      gemm(block, first, stop);
      unit = block * rows + stop;
    }
  });
}

// Float32 x (params[0]: k blocks of width p, either layout), w (k, q, p) and the blocks (k, B, q) of y or dy
// (params[2]), all consistent.
bool MatmulShapes(int *ndims, int64_t **shapes, const char **dtypes, int nparam, int64_t *k,
                  int64_t *q, int64_t *p, Blocks *x) {
  if (!AllFloat32(nparam, dtypes) || ndims[1] != 3 || ndims[2] != 3) return false;
  *k = shapes[1][0], *q = shapes[1][1], *p = shapes[1][2];
  return ActivationBlocks(ndims[0], shapes[0], *k, x) && x->width == *p && shapes[2][0] == *k &&
         shapes[2][1] == x->batch && shapes[2][2] == *q;
}

}  // namespace

// y[kk] = x[kk] . w[kk]^T for every block.      params: x (k, B, p) or (B, k*p), w (k, q, p), y (k, B, q)
extern "C" int BlocksMatmul(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                            void *stream, void *extra) {
  const Sgemm sgemm = FindSgemm();
  int64_t k, q, p;
  Blocks x;
  if (sgemm == nullptr || nparam != 3 || !MatmulShapes(ndims, shapes, dtypes, nparam, &k, &q, &p, &x)) return 1;
  const float *input = static_cast<const float *>(params[0]);
  const float *weight = static_cast<const float *>(params[1]);
  float *y = static_cast<float *>(params[2]);
  std::atomic<int> status{0};
  OverBlockRows(k, x.batch, [&](int64_t kk, int64_t begin, int64_t end) {
    const float *a = input + kk * x.block_stride + begin * x.row_stride;
    if (sgemm('N', 'T', end - begin, q, p, 1.0f, a, x.row_stride, weight + kk * q * p, p, 0.0f,
              y + (kk * x.batch + begin) * q, q) != 0)
      status = 1;
  });
  return status.load();
}

// dx[kk] = dy[kk] . w[kk] (in x's layout), dw[kk] = dy[kk]^T . x[kk].      params: x, w, dy, dx, dw
extern "C" int BlocksMatmulBackward(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                                    void *stream, void *extra) {
  const Sgemm sgemm = FindSgemm();
  int64_t k, q, p;
  Blocks x;
  if (sgemm == nullptr || nparam != 5 || !MatmulShapes(ndims, shapes, dtypes, nparam, &k, &q, &p, &x)) return 1;
  const float *input = static_cast<const float *>(params[0]);
  const float *weight = static_cast<const float *>(params[1]);
  const float *dy = static_cast<const float *>(params[2]);
  float *dx = static_cast<float *>(params[3]);
  float *dw = static_cast<float *>(params[4]);
  std::atomic<int> status{0};
  OverBlockRows(k, x.batch, [&](int64_t kk, int64_t begin, int64_t end) {
    if (sgemm('N', 'N', end - begin, p, q, 1.0f, dy + (kk * x.batch + begin) * q, q, weight + kk * q * p, p, 0.0f,
              dx + kk * x.block_stride + begin * x.row_stride, x.row_stride) != 0)
      status = 1;
  });
  // Rows [begin, end) of dw[kk] are columns [begin, end) of dy[kk], transposed.
  OverBlockRows(k, q, [&](int64_t kk, int64_t begin, int64_t end) {
    if (sgemm('T', 'N', end - begin, p, x.batch, 1.0f, dy + kk * x.batch * q + begin, q, input + kk * x.block_stride,
              x.row_stride, 0.0f, dw + (kk * q + begin) * p, p) != 0)
      status = 1;
  });
  return status.load();
}

// Sketch Structured Linear's input sketch. Each K-step t of x (M, K) holds c chunks of 32; chunk ck is rotated
// left by shifts[ck] and the c rotated chunks are added: y[m, t*32 + j] = sum_ck x[m, (t*c + ck)*32 + (j + s) % 32].
// params: x (M, K) float32, shifts (c,) int32, y (M, K/c) float32
namespace {
constexpr int64_t kSslChunk = 32;

bool SslShapes(int nparam, int *ndims, int64_t **shapes, const char **dtypes, int64_t *rows, int64_t *width,
               int64_t *c) {
  if (nparam != 3 || ndims[0] != 2 || ndims[1] != 1 || ndims[2] != 2) return false;
  if (std::strcmp(dtypes[1], "int32") != 0) return false;
  const char *floats[] = {dtypes[0], dtypes[2]};
  if (!AllFloat32(2, floats)) return false;
  *rows = shapes[0][0], *width = shapes[0][1], *c = shapes[1][0];
  return *c > 0 && *width % (kSslChunk * *c) == 0 && shapes[2][0] == *rows && shapes[2][1] * *c == *width;
}

bool SslShiftsValid(const int32_t *shifts, int64_t c) {
  for (int64_t ck = 0; ck < c; ++ck) {
    if (shifts[ck] < 0 || shifts[ck] >= kSslChunk) return false;
  }
  return true;
}
}  // namespace

extern "C" int SslChunkSum(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                           void *stream, void *extra) {
  int64_t rows, width, c;
  if (!SslShapes(nparam, ndims, shapes, dtypes, &rows, &width, &c)) return 1;
  const float *x = static_cast<const float *>(params[0]);
  const int32_t *shifts = static_cast<const int32_t *>(params[1]);
  float *y = static_cast<float *>(params[2]);
  if (!SslShiftsValid(shifts, c)) return 1;
  const int64_t out_width = width / c, steps = out_width / kSslChunk;
  ParallelFor(rows, [&](int, int64_t begin, int64_t end) {
    for (int64_t m = begin; m < end; ++m) {
      const float *row = x + m * width;
      float *out = y + m * out_width;
      for (int64_t t = 0; t < steps; ++t) {
        float *dst = out + t * kSslChunk;
        for (int64_t ck = 0; ck < c; ++ck) {
          const float *chunk = row + (t * c + ck) * kSslChunk;
          const int64_t s = shifts[ck];
          if (ck == 0) {
            for (int64_t j = 0; j < kSslChunk - s; ++j) dst[j] = chunk[j + s];
            for (int64_t j = kSslChunk - s; j < kSslChunk; ++j) dst[j] = chunk[j + s - kSslChunk];
          } else {
#pragma omp simd
            for (int64_t j = 0; j < kSslChunk - s; ++j) dst[j] += chunk[j + s];
            for (int64_t j = kSslChunk - s; j < kSslChunk; ++j) dst[j] += chunk[j + s - kSslChunk];
          }
        }
      }
    }
  });
  return 0;
}

// The gradient: every x entry feeds exactly one y entry, so dx is a rotated copy of dy per chunk.
// params: x (M, K) (for its shape), shifts (c,) int32, dy (M, K/c), dx (M, K)
extern "C" int SslChunkSumBackward(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                                   void *stream, void *extra) {
  int64_t rows, width, c;
  if (nparam != 4 || !SslShapes(3, ndims, shapes, dtypes, &rows, &width, &c)) return 1;
  if (ndims[3] != 2 || shapes[3][0] != rows || shapes[3][1] != width) return 1;
  const int32_t *shifts = static_cast<const int32_t *>(params[1]);
  const float *dy = static_cast<const float *>(params[2]);
  float *dx = static_cast<float *>(params[3]);
  if (!SslShiftsValid(shifts, c)) return 1;
  const int64_t out_width = width / c, steps = out_width / kSslChunk;
  ParallelFor(rows, [&](int, int64_t begin, int64_t end) {
    for (int64_t m = begin; m < end; ++m) {
      const float *grad = dy + m * out_width;
      float *row = dx + m * width;
      for (int64_t t = 0; t < steps; ++t) {
        const float *src = grad + t * kSslChunk;
        for (int64_t ck = 0; ck < c; ++ck) {
          float *chunk = row + (t * c + ck) * kSslChunk;
          const int64_t s = shifts[ck];  // chunk[i] went to src[(i - s) mod 32]
          for (int64_t i = s; i < kSslChunk; ++i) chunk[i] = src[i - s];
          for (int64_t i = 0; i < s; ++i) chunk[i] = src[i - s + kSslChunk];
        }
      }
    }
  });
  return 0;
}

// Pixelfly's SparseLRLinear (layers/pixelfly.py), token-major, one kernel each way:
//   y = (1 - g) * S x + g * W2 (W1 x) + bias,   g = sigmoid(x . wg + bg), one scalar per token
// S is fly's block-sparse weight: blocks (nnz, b, b) in the row-major order of the layout's nonzeros. The product
// runs as a few large sgemms instead of one per block: block rows with the same nonzero columns form a row run,
// its nonzero columns split into contiguous column runs, and each (row run, column run) is one matrix packed from
// the blocks. A Mixer-B channel layer (flat butterfly 8, 2 factors) has 8 row runs and 12 such matrices, so only
// the layout's 3/8 of the dense work is done. The gate scales whole rows, so the sparse term is mixed per token
// after its sgemms and the low-rank term is added by one more sgemm on the gated hidden.
namespace {

// One packed matrix of S: output features [row0, row0 + rows) by input features [col0, col0 + cols), stored
// row-major at `offset` of the packed buffer. `first`: the first of its row run (sgemm's beta = 0).
struct SparseCall {
  int64_t row0, rows, col0, cols, offset;
  bool first;
};

struct SparsePlan {
  int64_t block = 0, in = 0, out = 0, packed = 0;
  std::vector<SparseCall> calls;
  // The output features in order, one segment per row run, (first feature, width, whether no block reaches it:
  // zeros). Each segment is kept contiguous in the backward's copies of dy (a row of dy is 3072 floats in Mixer-B's
  // fc1, and sgemm reads a transposed operand at that stride at half speed).
  struct Segment {
    int64_t row0, rows;
    bool empty;
  };
  std::vector<Segment> segments;
  std::vector<int64_t> position;  // block (r, c) -> index in the weight, or -1
};

// The plan of a layout (R, C) of zeros and ones with exactly `nnz` ones; false for anything else, so a
// corrupt layout can never send a read past the weight.
bool MakeSparsePlan(const int32_t *layout, int64_t R, int64_t C, int64_t b, int64_t nnz, SparsePlan *plan) {
  plan->block = b, plan->in = C * b, plan->out = R * b;
  plan->position.assign(R * C, -1);
  int64_t count = 0;
  for (int64_t i = 0; i < R * C; ++i) {
    if (layout[i] != 0 && layout[i] != 1) return false;
    if (layout[i] == 1) plan->position[i] = count++;
  }
  if (count != nnz) return false;
  for (int64_t r = 0; r < R;) {
    int64_t end = r + 1;
    while (end < R && std::equal(layout + end * C, layout + (end + 1) * C, layout + r * C)) ++end;
    bool first = true;
    for (int64_t c = 0; c < C;) {
      if (layout[r * C + c] == 0) { ++c; continue; }
      int64_t stop = c + 1;
      while (stop < C && layout[r * C + stop] == 1) ++stop;
      plan->calls.push_back({r * b, (end - r) * b, c * b, (stop - c) * b, plan->packed, first});
      plan->packed += (end - r) * b * (stop - c) * b;
      first = false;
      c = stop;
    }
    plan->segments.push_back({r * b, (end - r) * b, first});
    r = end;
  }
  return true;
}

// Copies between fly's blocks and the packed matrices, each way (to_packed: blocks -> packed).
void CopyPacked(const SparsePlan &plan, float *blocks, float *packed, bool to_packed) {
  const int64_t b = plan.block, C = plan.in / b;
  ParallelFor(static_cast<int64_t>(plan.calls.size()), [&](int, int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n) {
      const SparseCall &call = plan.calls[n];
      for (int64_t row = 0; row < call.rows; ++row) {
        const int64_t r = (call.row0 + row) / b, ii = (call.row0 + row) % b;
        float *packed_row = packed + call.offset + row * call.cols;
        for (int64_t j = 0; j < call.cols / b; ++j) {
          float *block_row = blocks + (plan.position[r * C + call.col0 / b + j] * b + ii) * b;
          if (to_packed) std::copy(block_row, block_row + b, packed_row + j * b);
          else std::copy(packed_row + j * b, packed_row + (j + 1) * b, block_row);
        }
      }
    }
  });
}

inline float Dot(const float *a, const float *b, int64_t n) {
  float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
  for (int64_t i = 0; i < n; ++i) sum += a[i] * b[i];
  return sum;
}

inline float Sigmoid(float v) { return 1.0f / (1.0f + expf(-v)); }

constexpr int64_t kTokenChunk = 256;

// Scratch buffers kept between calls: the same sizes come back every step, and fresh memory would be faulted in
// page by page each time (~6,000 pages per Mixer-B backward). A buffer is lent for one call and returned; the pool
// holds as many as were ever in use at once.
class BufferPool {
 public:
  static BufferPool &Get() {
    static BufferPool *pool = new BufferPool();  // never destroyed, as the thread pool
    return *pool;
  }
  std::vector<float> Take(int64_t size) {
    std::vector<float> buffer;
    {
      std::lock_guard<std::mutex> guard(mutex_);
      if (!free_.empty()) {
        auto largest = std::max_element(free_.begin(), free_.end(),
                                        [](const auto &a, const auto &b) { return a.size() < b.size(); });
        buffer = std::move(*largest);
        free_.erase(largest);
      }
    }
    if (static_cast<int64_t>(buffer.size()) < size) buffer.resize(size);
    return buffer;
  }
  void Give(std::vector<float> &&buffer) {
    std::lock_guard<std::mutex> guard(mutex_);
    free_.push_back(std::move(buffer));
  }

 private:
  std::mutex mutex_;
  std::vector<std::vector<float>> free_;
};

// A pooled buffer of at least `size` floats for the scope of one call (contents undefined).
class Scratch {
 public:
  explicit Scratch(int64_t size) : buffer_(BufferPool::Get().Take(std::max<int64_t>(size, 1))) {}
  ~Scratch() { BufferPool::Get().Give(std::move(buffer_)); }
  Scratch(const Scratch &) = delete;
  Scratch &operator=(const Scratch &) = delete;
  float *get() { return buffer_.data(); }
  float &operator[](int64_t i) { return buffer_[i]; }

 private:
  std::vector<float> buffer_;
};

// Inputs shared by both directions: x (T, in), weight (nnz, b, b), layout (R, C) int32, lr_weight1 (rank, in),
// lr_weight2 (out, rank), gate weight (1, in), gate bias (1), bias (out), then y or dy (T, out). Checked, and the
// plan made.
struct SparseLowRank {
  const float *x, *weight, *lr1, *lr2, *gate_w, *gate_b, *bias;
  int64_t tokens, in, out, rank;
  SparsePlan plan;
};

bool SparseLowRankInputs(void **params, int *ndims, int64_t **shapes, const char **dtypes, SparseLowRank *s) {
  if (ndims[0] != 2 || ndims[1] != 3 || ndims[2] != 2 || ndims[3] != 2 || ndims[4] != 2) return false;
  if (std::strcmp(dtypes[2], "int32") != 0) return false;
  const char *floats[] = {dtypes[0], dtypes[1], dtypes[3], dtypes[4], dtypes[5], dtypes[6], dtypes[7]};
  if (!AllFloat32(7, floats) || !AllFloat32(1, dtypes + 8)) return false;
  s->tokens = shapes[0][0], s->in = shapes[0][1];
  const int64_t nnz = shapes[1][0], b = shapes[1][1], R = shapes[2][0], C = shapes[2][1];
  s->rank = shapes[3][0], s->out = shapes[4][0];
  if (b <= 0 || shapes[1][2] != b || C * b != s->in || R * b != s->out || shapes[3][1] != s->in ||
      shapes[4][1] != s->rank || s->rank <= 0 || NumElements(ndims[5], shapes[5]) != s->in ||
      NumElements(ndims[6], shapes[6]) != 1 || NumElements(ndims[7], shapes[7]) != s->out || ndims[8] != 2 ||
      shapes[8][0] != s->tokens || shapes[8][1] != s->out)
    return false;
  s->x = static_cast<const float *>(params[0]);
  s->weight = static_cast<const float *>(params[1]);
  s->lr1 = static_cast<const float *>(params[3]);
  s->lr2 = static_cast<const float *>(params[4]);
  s->gate_w = static_cast<const float *>(params[5]);
  s->gate_b = static_cast<const float *>(params[6]);
  s->bias = static_cast<const float *>(params[7]);
  return MakeSparsePlan(static_cast<const int32_t *>(params[2]), R, C, b, nnz, &s->plan);
}

// h = x W1^T and g for tokens [t, t + m).
bool HiddenAndGate(Sgemm sgemm, const SparseLowRank &s, int64_t t, int64_t m, float *h, float *g) {
  const float *x = s.x + t * s.in;
  if (sgemm('N', 'T', m, s.rank, s.in, 1.0f, x, s.in, s.lr1, s.in, 0.0f, h, s.rank) != 0) return false;
  for (int64_t i = 0; i < m; ++i) g[i] = Sigmoid(Dot(x + i * s.in, s.gate_w, s.in) + s.gate_b[0]);
  return true;
}

}  // namespace

// params: x, weight, layout, lr_weight1, lr_weight2, gate weight, gate bias, bias, y (T, out)
extern "C" int SparseLowRankForward(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                                    void *stream, void *extra) {
  const Sgemm sgemm = FindSgemm();
  SparseLowRank s;
  if (sgemm == nullptr || nparam != 9 || !SparseLowRankInputs(params, ndims, shapes, dtypes, &s)) return 1;
  float *y = static_cast<float *>(params[8]);
  Scratch packed(s.plan.packed);
  CopyPacked(s.plan, const_cast<float *>(s.weight), packed.get(), true);
  std::atomic<int> status{0};
  ParallelFor(s.tokens, [&](int, int64_t begin, int64_t end) {
    std::vector<float> h(kTokenChunk * s.rank), g(kTokenChunk);
    for (int64_t t = begin; t < end; t += kTokenChunk) {
      const int64_t m = std::min(kTokenChunk, end - t);
      const float *x = s.x + t * s.in;
      float *yt = y + t * s.out;
      if (!HiddenAndGate(sgemm, s, t, m, h.data(), g.data())) { status = 1; return; }
      for (const auto &[row0, rows, empty] : s.plan.segments)
        if (empty)
          for (int64_t i = 0; i < m; ++i) std::fill(yt + i * s.out + row0, yt + i * s.out + row0 + rows, 0.0f);
      for (const SparseCall &call : s.plan.calls) {
        if (sgemm('N', 'T', m, call.rows, call.cols, 1.0f, x + call.col0, s.in, packed.get() + call.offset,
                  call.cols, call.first ? 0.0f : 1.0f, yt + call.row0, s.out) != 0) { status = 1; return; }
      }
      for (int64_t i = 0; i < m; ++i) {
        const float keep = 1.0f - g[i];
        float *row = yt + i * s.out;
#pragma omp simd
        for (int64_t o = 0; o < s.out; ++o) row[o] = keep * row[o] + s.bias[o];
        for (int64_t k = 0; k < s.rank; ++k) h[i * s.rank + k] *= g[i];
      }
      if (sgemm('N', 'T', m, s.out, s.rank, 1.0f, h.data(), s.rank, s.lr2, s.rank, 1.0f, yt, s.out) != 0) {
        status = 1;
        return;
      }
    }
  });
  return status.load();
}

// The gradients. With u = dy S (the sparse term's input gradient before the gate), per token
//   dg = dy . (W2 h - S x) = (dy W2) . h - u . x,   dlogit = dg g (1 - g)
//   dx = (1 - g) u + (g dy W2) W1 + dlogit wg
//   dS = ((1 - g) dy)^T x on the layout's blocks,  dW2 = dy^T (g h),  dW1 = (g dy W2)^T x,  dbias = sum dy
// The first pass, over chunks of tokens, also copies dy segment by segment (and (1 - g) times the narrower of dy
// and x), so the second, over the weights' rows, reads its transposed operands contiguously.
// params: x, weight, layout, lr_weight1, lr_weight2, gate weight, gate bias, bias, dy (T, out),
//         dx, dweight, dlr_weight1, dlr_weight2, dgate weight, dgate bias, dbias
extern "C" int SparseLowRankBackward(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                                     void *stream, void *extra) {
  const Sgemm sgemm = FindSgemm();
  SparseLowRank s;
  if (sgemm == nullptr || nparam != 16 || !SparseLowRankInputs(params, ndims, shapes, dtypes, &s) ||
      !AllFloat32(7, dtypes + 9))
    return 1;
  const int64_t T = s.tokens, in = s.in, out = s.out, rank = s.rank;
  const float *dy = static_cast<const float *>(params[8]);
  float *dx = static_cast<float *>(params[9]);
  float *dweight = static_cast<float *>(params[10]);
  float *dlr1 = static_cast<float *>(params[11]);
  float *dlr2 = static_cast<float *>(params[12]);
  float *dgate_w = static_cast<float *>(params[13]);
  float *dgate_b = static_cast<float *>(params[14]);
  float *dbias = static_cast<float *>(params[15]);
  const SparsePlan &plan = s.plan;
  Scratch packed(plan.packed);
  CopyPacked(plan, const_cast<float *>(s.weight), packed.get(), true);
  // Segment-major copies: segment (row0, rows) of token t at [row0 * T + t * rows, + rows).
  const bool scale_input = in <= out;  // (1 - g) goes on the narrower of x and dy
  Scratch dy_segments(T * out), scaled(T * (scale_input ? in : out)), gated_hidden(T * rank), hidden_grad(T * rank);
  const int parts = NumParts();
  std::vector<float> partial(parts * (out + in + 1), 0.0f);  // per thread: dbias, dgate weight, dgate bias
  std::atomic<int> status{0};
  ParallelFor(T, [&](int part, int64_t begin, int64_t end) {
    Scratch u(kTokenChunk * in), dh(kTokenChunk * rank), g(kTokenChunk);
    float *part_dbias = partial.data() + part * (out + in + 1), *part_dgate_w = part_dbias + out;
    float *part_dgate_b = part_dgate_w + in;
    for (int64_t t = begin; t < end; t += kTokenChunk) {
      const int64_t m = std::min(kTokenChunk, end - t);
      const float *x = s.x + t * in, *dyt = dy + t * out;
      float *h = gated_hidden.get() + t * rank, *dht = hidden_grad.get() + t * rank, *dxt = dx + t * in;
      if (!HiddenAndGate(sgemm, s, t, m, h, g.get())) { status = 1; return; }
      for (const auto &[row0, rows, empty] : plan.segments) {
        for (int64_t i = 0; i < m; ++i) {
          const float *source = dyt + i * out + row0;
          std::copy(source, source + rows, dy_segments.get() + row0 * T + (t + i) * rows);
          if (!scale_input) {
            float *target = scaled.get() + row0 * T + (t + i) * rows;
            const float keep = 1.0f - g[i];
#pragma omp simd
            for (int64_t o = 0; o < rows; ++o) target[o] = keep * source[o];
          }
        }
      }
      std::fill(u.get(), u.get() + m * in, 0.0f);
      for (const SparseCall &call : plan.calls) {
        if (sgemm('N', 'N', m, call.cols, call.rows, 1.0f, dy_segments.get() + call.row0 * T + t * call.rows,
                  call.rows, packed.get() + call.offset, call.cols, 1.0f, u.get() + call.col0, in) != 0) {
          status = 1;
          return;
        }
      }
      if (sgemm('N', 'N', m, rank, out, 1.0f, dyt, out, s.lr2, rank, 0.0f, dh.get(), rank) != 0) {
        status = 1;
        return;
      }
      for (int64_t i = 0; i < m; ++i) {
        const float gi = g[i], keep = 1.0f - gi;
        const float *xi = x + i * in, *dyi = dyt + i * out, *ui = u.get() + i * in;
        const float dlogit = (Dot(dh.get() + i * rank, h + i * rank, rank) - Dot(ui, xi, in)) * gi * keep;
        for (int64_t k = 0; k < rank; ++k) {
          dht[i * rank + k] = gi * dh[i * rank + k];
          h[i * rank + k] *= gi;
        }
        if (scale_input) {
          float *target = scaled.get() + (t + i) * in;
#pragma omp simd
          for (int64_t c = 0; c < in; ++c) target[c] = keep * xi[c];
        }
#pragma omp simd
        for (int64_t o = 0; o < out; ++o) part_dbias[o] += dyi[o];
        float *dxi = dxt + i * in;
#pragma omp simd
        for (int64_t c = 0; c < in; ++c) {
          part_dgate_w[c] += dlogit * xi[c];
          dxi[c] = keep * ui[c] + dlogit * s.gate_w[c];
        }
        part_dgate_b[0] += dlogit;
      }
      if (sgemm('N', 'N', m, in, rank, 1.0f, dht, rank, s.lr1, in, 1.0f, dxt, in) != 0) { status = 1; return; }
    }
  });
  if (status.load() != 0) return 1;
  std::vector<float> totals(out + in + 1);
  SumParts(partial, out + in + 1, totals.data());
  std::copy(totals.begin(), totals.begin() + out, dbias);
  std::copy(totals.begin() + out, totals.begin() + out + in, dgate_w);
  dgate_b[0] = totals[out + in];
  // The weight gradients reduce over the tokens: threads share their output rows (or dW1's columns) instead.
  Scratch dpacked(plan.packed);
  int64_t work = 0;
  for (const SparseCall &call : plan.calls) work += call.rows * call.cols;
  const float *dy_for_ds = scale_input ? dy_segments.get() : scaled.get();
  const float *x_for_ds = scale_input ? scaled.get() : s.x;
  ThreadPool::Get().Run([&](int part, int parts) {
    const int64_t lo = out * part / parts, hi = out * (part + 1) / parts;
    for (const auto &[row0, rows, empty] : plan.segments) {  // dW2's rows [lo, hi), segment by segment
      const int64_t first = std::max(lo, row0), last = std::min(hi, row0 + rows);
      if (last > first && sgemm('T', 'N', last - first, rank, T, 1.0f, dy_segments.get() + row0 * T + (first - row0),
                                rows, gated_hidden.get(), rank, 0.0f, dlr2 + first * rank, rank) != 0) status = 1;
    }
    const int64_t c0 = in * part / parts, c1 = in * (part + 1) / parts;
    if (c1 > c0 && sgemm('T', 'N', rank, c1 - c0, T, 1.0f, hidden_grad.get(), rank, s.x + c0, in, 0.0f, dlr1 + c0,
                         in) != 0) status = 1;
    // dS: this thread's share of the packed matrices' rows, by work
    const int64_t from = work * part / parts, to = work * (part + 1) / parts;
    int64_t done = 0;
    for (const SparseCall &call : plan.calls) {
      const int64_t r0 = std::clamp((from - done + call.cols - 1) / call.cols, int64_t{0}, call.rows);
      const int64_t r1 = std::clamp((to - done + call.cols - 1) / call.cols, int64_t{0}, call.rows);
      done += call.rows * call.cols;
      if (r1 > r0 && sgemm('T', 'N', r1 - r0, call.cols, T, 1.0f, dy_for_ds + call.row0 * T + r0, call.rows,
                           x_for_ds + call.col0, in, 0.0f, dpacked.get() + call.offset + r0 * call.cols,
                           call.cols) != 0) status = 1;
    }
  });
  if (status.load() != 0) return 1;
  CopyPacked(plan, dweight, dpacked.get(), false);
  return 0;
}
