// The sequential loops of a training chunk's recurrence, forward and back,
// for skcrnn._rnn._fused (which computes everything else of the chunk: the
// backward factors before the loop, the weight gradients after it).
//
// Why C++: a step of 20 users x 32 hidden units is ~60,000 multiply-adds,
// less than a microsecond of arithmetic, while each of its half-dozen torch
// kernels costs 2-3 microseconds of dispatch. Here a step is plain loops over
// one user at a time (whose matrices stay in L1), vectorized by the compiler.
//
// Layouts (all contiguous, rows = users): start (B, H); inputs (B, T, k*H);
// weights (B, H, k*H) per user or (H, k*H) shared, acting from the right on
// row vectors; GRU columns are [update | reset | candidate].

#include <torch/extension.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
// one copy per instruction set, chosen when the library is loaded
#define SKCRNN_CLONES \
  __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define SKCRNN_CLONES
#endif

namespace {

template <typename T> struct Float;
template <> struct Float<float> {
  using Bits = int32_t;
  static constexpr int kMantissa = 23, kBias = 127;
  static constexpr float kLow = -87.0f, kHigh = 88.0f;
  static constexpr float kLn2High = 0.693359375f, kLn2Low = -2.12194440e-4f;
  static constexpr int kDegree = 7;
};
template <> struct Float<double> {
  using Bits = int64_t;
  static constexpr int kMantissa = 52, kBias = 1023;
  static constexpr double kLow = -708.0, kHigh = 709.0;
  static constexpr double kLn2High = 6.93147180369123816490e-01;
  static constexpr double kLn2Low = 1.90821492927058770002e-10;
  static constexpr int kDegree = 13;
};

// 1 + r/k (1 + r/(k+1) (... (1 + r/n))): the exponential's Taylor polynomial
// of degree n for k = 1, in Horner's form, unrolled at compile time
template <typename T, int k, int n>
inline T taylor(T r) {
  if constexpr (k > n) {
    return T(1);
  } else {
    return T(1) + r * (T(1) / T(k)) * taylor<T, k + 1, n>(r);
  }
}

// exp(x) to about an ulp, branch-free so that loops over it vectorize:
// x = n ln2 + r with |r| <= ln2 / 2, exp(r) by its Taylor polynomial, 2^n
// written into the exponent bits. n comes from rounding by adding and
// removing 1.5 * 2^mantissa, whose low bits then hold n (no float-to-int
// conversion, no floor: both vectorize poorly). Inputs are clamped to where
// exp(x) is a normal number (sigmoid and tanh are flat there anyway).
template <typename T>
inline T vexp(T x) {
  using F = Float<T>;
  using Bits = typename F::Bits;
  const T magic = T(1.5) * T(Bits(1) << F::kMantissa);
  x = std::min(std::max(x, T(F::kLow)), T(F::kHigh));
  const T shifted = x * T(1.4426950408889634) + magic;
  const T n = shifted - magic;
  const T r = (x - n * F::kLn2High) - n * F::kLn2Low;
  const T poly = taylor<T, 1, F::kDegree>(r);
  Bits shifted_bits, magic_bits;
  std::memcpy(&shifted_bits, &shifted, sizeof(T));
  std::memcpy(&magic_bits, &magic, sizeof(T));
  const Bits bits = (shifted_bits - magic_bits + F::kBias) << F::kMantissa;
  T scale;
  std::memcpy(&scale, &bits, sizeof(T));
  return poly * scale;
}

template <typename T>
inline void sigmoid_(T* x, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) x[i] = T(1) / (T(1) + vexp(-x[i]));
}

template <typename T>
inline void tanh_(T* x, int64_t n) {
  // tanh(x) = 1 - 2 / (exp(2x) + 1): absolute error of an ulp of 1
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) x[i] = T(1) - T(2) / (vexp(T(2) * x[i]) + T(1));
}

template <typename T>
inline void activate_(T* x, int64_t n, bool sigmoid) {
  if (sigmoid) sigmoid_(x, n); else tanh_(x, n);
}

// out[0:n] += sum_i x[i] w[i, 0:n] for i < m, w with row stride `stride`:
// `kBlock` outputs held in registers across all m rows (several independent
// vector accumulators), so the loop runs at the multiply-add throughput
// instead of waiting on each accumulation's latency.
template <typename T, int64_t kBlock>
inline void accumulate_block(const T* __restrict__ x, int64_t m,
                             const T* __restrict__ w, int64_t stride,
                             T* __restrict__ out) {
  T sum[kBlock];
  for (int64_t l = 0; l < kBlock; ++l) sum[l] = out[l];
  for (int64_t i = 0; i < m; ++i) {
    const T xi = x[i];
    const T* row = w + i * stride;
#pragma omp simd
    for (int64_t l = 0; l < kBlock; ++l) sum[l] += xi * row[l];
  }
  for (int64_t l = 0; l < kBlock; ++l) out[l] = sum[l];
}

template <typename T>
inline void accumulate(const T* __restrict__ x, int64_t m, const T* __restrict__ w,
                       int64_t stride, int64_t n, T* __restrict__ out) {
  constexpr int64_t kLanes = 64 / sizeof(T);  // one 512-bit vector
  int64_t j = 0;
  for (; j + 4 * kLanes <= n; j += 4 * kLanes)
    accumulate_block<T, 4 * kLanes>(x, m, w + j, stride, out + j);
  for (; j + kLanes <= n; j += kLanes)
    accumulate_block<T, kLanes>(x, m, w + j, stride, out + j);
  for (; j < n; ++j) {
    T sum = out[j];
    for (int64_t i = 0; i < m; ++i) sum += x[i] * w[i * stride + j];
    out[j] = sum;
  }
}

struct Shape {
  int64_t rows, columns, steps, size, width;
  bool shared;
  int64_t weight_offset(int64_t row) const { return shared ? 0 : row * size * width; }
};

template <typename T>
void gru_forward_loop(const Shape& s, bool sigmoid_candidate, const T* start,
                      const T* inputs, const T* weights, T* states, T* final,
                      T* gates, T* candidates) {
  const int64_t H = s.size, W = s.width;
  std::vector<T> hidden(H), reset_hidden(H);
  for (int64_t b = 0; b < s.rows; ++b) {
    const T* w = weights + s.weight_offset(b);
    std::memcpy(hidden.data(), start + b * H, H * sizeof(T));
    std::memcpy(states + b * s.columns * H, hidden.data(), H * sizeof(T));
    for (int64_t t = 0; t < s.steps; ++t) {
      const T* x = inputs + (b * s.columns + t) * W;
      T* gate = gates + (b * s.steps + t) * 2 * H;
      T* candidate = candidates + (b * s.steps + t) * H;
      std::memcpy(gate, x, 2 * H * sizeof(T));
      accumulate(hidden.data(), H, w, W, 2 * H, gate);
      sigmoid_(gate, 2 * H);
      for (int64_t k = 0; k < H; ++k) reset_hidden[k] = gate[H + k] * hidden[k];
      std::memcpy(candidate, x + 2 * H, H * sizeof(T));
      accumulate(reset_hidden.data(), H, w + 2 * H, W, H, candidate);
      activate_(candidate, H, sigmoid_candidate);
      for (int64_t k = 0; k < H; ++k) hidden[k] += gate[k] * (candidate[k] - hidden[k]);
      if (t + 1 < s.columns)
        std::memcpy(states + (b * s.columns + t + 1) * H, hidden.data(), H * sizeof(T));
    }
    std::memcpy(final + b * H, hidden.data(), H * sizeof(T));
  }
}

// grad: on entry the gradient of each row's carry, on exit of its start.
// weights_t: the recurrent matrices transposed, (k*H, H) per row.
template <typename T>
void gru_backward_loop(const Shape& s, const T* grad_states, const T* weights_t,
                       const T* update_factor, const T* reset_factor,
                       const T* candidate_factor, const T* keep, const T* reset,
                       T* grad, T* grad_gates, T* grad_candidates) {
  const int64_t H = s.size;
  std::vector<T> reset_hidden(H), next(H);
  for (int64_t b = 0; b < s.rows; ++b) {
    const T* w_t = weights_t + s.weight_offset(b);
    T* g = grad + b * H;
    for (int64_t t = s.steps - 1; t >= 0; --t) {
      const int64_t at = (b * s.steps + t) * H;
      T* grad_candidate = grad_candidates + at;
      T* grad_gate = grad_gates + 2 * at;
      for (int64_t k = 0; k < H; ++k) grad_candidate[k] = g[k] * candidate_factor[at + k];
      std::fill(reset_hidden.begin(), reset_hidden.end(), T(0));
      accumulate(grad_candidate, H, w_t + 2 * H * H, H, H, reset_hidden.data());
      const T* after = grad_states + (b * s.columns + t) * H;
      for (int64_t k = 0; k < H; ++k) {
        grad_gate[k] = g[k] * update_factor[at + k];
        grad_gate[H + k] = reset_hidden[k] * reset_factor[at + k];
        next[k] = after[k] + g[k] * keep[at + k] + reset_hidden[k] * reset[at + k];
      }
      accumulate(grad_gate, 2 * H, w_t, H, H, next.data());
      std::memcpy(g, next.data(), H * sizeof(T));
    }
  }
}

template <typename T>
void tanh_forward_loop(const Shape& s, const T* start, const T* inputs,
                       const T* weights, T* states, T* final, T* after) {
  const int64_t H = s.size;
  for (int64_t b = 0; b < s.rows; ++b) {
    const T* w = weights + s.weight_offset(b);
    const T* hidden = start + b * H;  // then the row of `after` just written
    std::memcpy(states + b * s.columns * H, hidden, H * sizeof(T));
    for (int64_t t = 0; t < s.steps; ++t) {
      T* out = after + (b * s.steps + t) * H;
      std::memcpy(out, inputs + (b * s.columns + t) * H, H * sizeof(T));
      accumulate(hidden, H, w, H, H, out);
      tanh_(out, H);
      hidden = out;
      if (t + 1 < s.columns)
        std::memcpy(states + (b * s.columns + t + 1) * H, out, H * sizeof(T));
    }
    std::memcpy(final + b * H, hidden, H * sizeof(T));
  }
}

template <typename T>
void tanh_backward_loop(const Shape& s, const T* grad_states, const T* weights_t,
                        const T* derivative, T* grad, T* grad_pre) {
  const int64_t H = s.size;
  std::vector<T> next(H);
  for (int64_t b = 0; b < s.rows; ++b) {
    const T* w_t = weights_t + s.weight_offset(b);
    T* g = grad + b * H;
    for (int64_t t = s.steps - 1; t >= 0; --t) {
      const int64_t at = (b * s.steps + t) * H;
      T* pre = grad_pre + at;
      for (int64_t k = 0; k < H; ++k) pre[k] = g[k] * derivative[at + k];
      std::memcpy(next.data(), grad_states + (b * s.columns + t) * H, H * sizeof(T));
      accumulate(pre, H, w_t, H, H, next.data());
      std::memcpy(g, next.data(), H * sizeof(T));
    }
  }
}

// The instruction-set clones: one non-template function per loop and type.
#define SKCRNN_INSTANTIATE(T, SUFFIX)                                              \
  SKCRNN_CLONES void gru_forward_##SUFFIX(const Shape& s, bool c, const T* a,     \
                                          const T* x, const T* w, T* st, T* f,    \
                                          T* g, T* cand) {                        \
    gru_forward_loop<T>(s, c, a, x, w, st, f, g, cand);                           \
  }                                                                               \
  SKCRNN_CLONES void gru_backward_##SUFFIX(const Shape& s, const T* gs,           \
                                           const T* w, const T* uf, const T* rf,  \
                                           const T* cf, const T* keep,            \
                                           const T* r, T* g, T* gg, T* gc) {      \
    gru_backward_loop<T>(s, gs, w, uf, rf, cf, keep, r, g, gg, gc);               \
  }                                                                               \
  SKCRNN_CLONES void tanh_forward_##SUFFIX(const Shape& s, const T* a,            \
                                           const T* x, const T* w, T* st, T* f,   \
                                           T* after) {                            \
    tanh_forward_loop<T>(s, a, x, w, st, f, after);                               \
  }                                                                               \
  SKCRNN_CLONES void tanh_backward_##SUFFIX(const Shape& s, const T* gs,          \
                                            const T* w, const T* d, T* g,         \
                                            T* gp) {                              \
    tanh_backward_loop<T>(s, gs, w, d, g, gp);                                    \
  }

SKCRNN_INSTANTIATE(float, f32)
SKCRNN_INSTANTIATE(double, f64)

void check(const std::vector<torch::Tensor>& tensors, const torch::Tensor& like) {
  for (const auto& t : tensors) {
    TORCH_CHECK(t.device().is_cpu(), "skcrnn recurrence: CPU tensors only");
    TORCH_CHECK(t.is_contiguous(), "skcrnn recurrence: contiguous tensors only");
    TORCH_CHECK(t.scalar_type() == like.scalar_type(),
                "skcrnn recurrence: tensors of one floating type");
  }
  TORCH_CHECK(like.scalar_type() == torch::kFloat || like.scalar_type() == torch::kDouble,
              "skcrnn recurrence: float32 or float64 only");
}

// rows and columns from `sequence` (B, T, .): the inputs forward, the
// states' gradient backward; size and width from the weights
// rows and columns from `sequence` (B, T, .): the inputs forward, the
// states' gradient backward; size H and width k*H from the weights, (H, k*H)
// per row or shared, or their transposes (k*H, H) with `transposed`
Shape shape_of(const torch::Tensor& sequence, const torch::Tensor& weights,
               int64_t n_steps, bool transposed = false) {
  TORCH_CHECK(sequence.dim() == 3 && (weights.dim() == 2 || weights.dim() == 3),
              "skcrnn recurrence: (B, T, .) sequences and 2-d or 3-d weights");
  Shape s;
  s.rows = sequence.size(0);
  s.columns = sequence.size(1);
  s.steps = n_steps;
  s.shared = weights.dim() == 2;
  const int64_t d = weights.dim();
  s.size = weights.size(transposed ? d - 1 : d - 2);
  s.width = weights.size(transposed ? d - 2 : d - 1);
  TORCH_CHECK(s.shared || weights.size(0) == s.rows,
              "skcrnn recurrence: one weight matrix per row expected");
  TORCH_CHECK(s.columns >= 1 && s.columns - 1 <= n_steps && n_steps <= s.columns,
              "skcrnn recurrence: n_steps must be T or T - 1, with T >= 1");
  return s;
}

// a (rows, steps, width) tensor
void check_steps(const torch::Tensor& t, const Shape& s, int64_t width,
                 const char* what) {
  TORCH_CHECK(t.dim() == 3 && t.size(0) == s.rows && t.size(1) == s.steps &&
                  t.size(2) == width,
              "skcrnn recurrence: ", what, " of the wrong shape");
}

void check_start(const torch::Tensor& start, const Shape& s) {
  TORCH_CHECK(start.dim() == 2 && start.size(0) == s.rows && start.size(1) == s.size,
              "skcrnn recurrence: the start states are (B, H)");
}

void check_carry(const torch::Tensor& grad, const Shape& s) {
  TORCH_CHECK(grad.dim() == 2 && grad.size(0) == s.rows && grad.size(1) == s.size,
              "skcrnn recurrence: the carry's gradient is (B, H)");
}

#define SKCRNN_DISPATCH(like, NAME, ...)                    \
  if ((like).scalar_type() == torch::kFloat) {              \
    using scalar_t = float;                                 \
    NAME##_f32(__VA_ARGS__);                                \
  } else {                                                  \
    using scalar_t = double;                                \
    NAME##_f64(__VA_ARGS__);                                \
  }

}  // namespace

// states (B, T, H): state before each item; final (B, H); gates (B, n, 2H);
// candidates (B, n, H).
std::vector<torch::Tensor> gru_forward(torch::Tensor start, torch::Tensor inputs,
                                       torch::Tensor weights, bool sigmoid_candidate,
                                       int64_t n_steps) {
  check({start, inputs, weights}, inputs);
  const Shape s = shape_of(inputs, weights, n_steps);
  TORCH_CHECK(s.width == 3 * s.size && inputs.size(2) == s.width,
              "skcrnn recurrence: GRU weights (H, 3H) and inputs (B, T, 3H)");
  check_start(start, s);
  auto states = torch::empty({s.rows, s.columns, s.size}, inputs.options());
  auto final = torch::empty({s.rows, s.size}, inputs.options());
  auto gates = torch::empty({s.rows, n_steps, 2 * s.size}, inputs.options());
  auto candidates = torch::empty({s.rows, n_steps, s.size}, inputs.options());
  SKCRNN_DISPATCH(inputs, gru_forward, s, sigmoid_candidate,
                  start.data_ptr<scalar_t>(), inputs.data_ptr<scalar_t>(),
                  weights.data_ptr<scalar_t>(), states.data_ptr<scalar_t>(),
                  final.data_ptr<scalar_t>(), gates.data_ptr<scalar_t>(),
                  candidates.data_ptr<scalar_t>());
  return {states, final, gates, candidates};
}

// grad (B, H) holds the carry's gradient on entry; returns the start's
// gradient (in grad), grad_gates (B, n, 2H) and grad_candidates (B, n, H).
// weights_t: the recurrent matrices transposed, (B, 3H, H) or (3H, H).
std::vector<torch::Tensor> gru_backward(torch::Tensor grad, torch::Tensor grad_states,
                                        torch::Tensor weights_t,
                                        torch::Tensor update_factor,
                                        torch::Tensor reset_factor,
                                        torch::Tensor candidate_factor,
                                        torch::Tensor keep, torch::Tensor reset) {
  check({grad, grad_states, weights_t, update_factor, reset_factor, candidate_factor,
         keep, reset}, grad);
  const Shape s = shape_of(grad_states, weights_t, update_factor.size(1), true);
  check_carry(grad, s);
  TORCH_CHECK(s.width == 3 * s.size && grad_states.size(2) == s.size,
              "skcrnn recurrence: GRU weights (H, 3H) and states (B, T, H)");
  for (const auto& factor : {update_factor, reset_factor, candidate_factor, keep, reset})
    check_steps(factor, s, s.size, "backward factors");
  auto grad_gates = torch::empty({s.rows, s.steps, 2 * s.size}, grad.options());
  auto grad_candidates = torch::empty({s.rows, s.steps, s.size}, grad.options());
  SKCRNN_DISPATCH(grad, gru_backward, s, grad_states.data_ptr<scalar_t>(),
                  weights_t.data_ptr<scalar_t>(), update_factor.data_ptr<scalar_t>(),
                  reset_factor.data_ptr<scalar_t>(),
                  candidate_factor.data_ptr<scalar_t>(), keep.data_ptr<scalar_t>(),
                  reset.data_ptr<scalar_t>(), grad.data_ptr<scalar_t>(),
                  grad_gates.data_ptr<scalar_t>(), grad_candidates.data_ptr<scalar_t>());
  return {grad, grad_gates, grad_candidates};
}

// states (B, T, H); final (B, H); after (B, n, H): the state after each step.
std::vector<torch::Tensor> tanh_forward(torch::Tensor start, torch::Tensor inputs,
                                        torch::Tensor weights, int64_t n_steps) {
  check({start, inputs, weights}, inputs);
  const Shape s = shape_of(inputs, weights, n_steps);
  TORCH_CHECK(s.width == s.size && inputs.size(2) == s.width,
              "skcrnn recurrence: tanh weights (H, H) and inputs (B, T, H)");
  check_start(start, s);
  auto states = torch::empty({s.rows, s.columns, s.size}, inputs.options());
  auto final = torch::empty({s.rows, s.size}, inputs.options());
  auto after = torch::empty({s.rows, n_steps, s.size}, inputs.options());
  SKCRNN_DISPATCH(inputs, tanh_forward, s, start.data_ptr<scalar_t>(),
                  inputs.data_ptr<scalar_t>(), weights.data_ptr<scalar_t>(),
                  states.data_ptr<scalar_t>(), final.data_ptr<scalar_t>(),
                  after.data_ptr<scalar_t>());
  return {states, final, after};
}

// grad as in gru_backward; returns it and grad_pre (B, n, H).
std::vector<torch::Tensor> tanh_backward(torch::Tensor grad, torch::Tensor grad_states,
                                         torch::Tensor weights_t,
                                         torch::Tensor derivative) {
  check({grad, grad_states, weights_t, derivative}, grad);
  const Shape s = shape_of(grad_states, weights_t, derivative.size(1), true);
  check_carry(grad, s);
  TORCH_CHECK(s.width == s.size && grad_states.size(2) == s.size,
              "skcrnn recurrence: tanh weights (H, H) and states (B, T, H)");
  check_steps(derivative, s, s.size, "derivative");
  auto grad_pre = torch::empty({s.rows, s.steps, s.size}, grad.options());
  SKCRNN_DISPATCH(grad, tanh_backward, s, grad_states.data_ptr<scalar_t>(),
                  weights_t.data_ptr<scalar_t>(), derivative.data_ptr<scalar_t>(),
                  grad.data_ptr<scalar_t>(), grad_pre.data_ptr<scalar_t>());
  return {grad, grad_pre};
}

// The loops run without the GIL, as torch's own kernels do, so that fits in
// several Python threads overlap.
PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  using release = pybind11::call_guard<pybind11::gil_scoped_release>;
  m.def("gru_forward", &gru_forward, release());
  m.def("gru_backward", &gru_backward, release());
  m.def("tanh_forward", &tanh_forward, release());
  m.def("tanh_backward", &tanh_backward, release());
}
