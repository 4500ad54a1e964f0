// Fused GRU recurrence for CPU training; built at first use by speechswarm/fused_gru.py,
// which documents what it does differently from ATen's CPU GRU and why.
#include <torch/extension.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ThreadLocalState.h>
#include <ATen/native/CPUBlas.h>
#include <ATen/record_function.h>
#include <c10/util/BFloat16.h>
#include <algorithm>
#include <cmath>
#include <type_traits>
#include <vector>

using at::Tensor;

namespace {

// Gate arithmetic and the carried hidden state in float for bf16 and float, in double for
// double (so a float64 run checks the algebra against ATen's to rounding).
template <typename S> using acc_t = at::opmath_type<S>;

// -ffast-math assumes no infinities, so exp must not overflow: a pre-activation past ~88
// made NaN (a demo run's BatchNorm statistics were lost to it). The arguments are clamped
// where sigmoid and tanh are 0 or 1 to the last bit of float (of double: to ~1e-35).
template <typename A> inline A clamp(A v, A lim) { return std::min(std::max(v, -lim), lim); }
template <typename A> inline A sigmoid(A v) { return A(1) / (A(1) + std::exp(-clamp(v, A(80)))); }
template <typename A> inline A tanh_of(A v) { return std::tanh(clamp(v, A(20))); }
// A store through a function, not `S(v)`: gcc 12 does not vectorise the loop when a bf16
// temporary is copy-assigned (measured: the forward pass ran 1.8x slower).
template <typename S, typename A> inline S narrow(A v) { return static_cast<S>(v); }

// The per-step recurrent GEMM on AMX. ATen's bf16 mm hands oneDNN plain row-major weights,
// and oneDNN re-packs them into AMX's VNNI layout at every call: at batch 24 x 512 -> 1536
// that repacking, not the multiply, is most of the step (~115 GFLOP/s on one core of a
// ~1 TFLOP/s AMX core). Here W is packed once per layer call and each step runs oneDNN's
// brgemm micro-kernel on it (bf16 x bf16 -> float), one 64- or 32-column block at a time:
// the packed layout's leading dimension must be 16, 32, 48 or 64.
struct PackedB {
  Tensor data;        // (N / blk) blocks of (K x blk) in VNNI layout
  int64_t K, N, blk;  // B is (K x N)
};

int64_t packed_block(int64_t H) { return H % 64 == 0 ? 64 : 32; }

bool packed_gemm_available(int64_t H) {
  return H % 32 == 0 && at::native::cpublas::could_pack(at::kBFloat16);
}

// B (K x N) row-major with row stride ld (a bf16 matrix or a transposed view made contiguous).
PackedB pack_b(const Tensor& b, int64_t blk) {
  const int64_t K = b.size(0), N = b.size(1), ld = b.stride(0);
  PackedB p{at::empty({N / blk, K, blk}, b.options()), K, N, blk};
  const auto* in = b.data_ptr<at::BFloat16>();
  auto* out = p.data.data_ptr<at::BFloat16>();
  for (int64_t j = 0; j < N / blk; ++j)
    at::native::cpublas::pack(K, blk, ld, blk, at::kBFloat16, at::kBFloat16, in + j * blk,
                              out + j * K * blk);
  return p;
}

// C (M x N) float, row stride ld_c  =  A (M x K) bf16, row stride ld_a  @  B.
void packed_gemm(const at::BFloat16* a, int64_t M, int64_t ld_a, const PackedB& b, float* c,
                 int64_t ld_c) {
  const auto* bp = b.data.data_ptr<at::BFloat16>();
  for (int64_t j = 0; j < b.N / b.blk; ++j)
    at::native::cpublas::brgemm(M, b.blk, b.K, ld_a, b.blk, ld_c, false, a,
                                bp + j * b.K * b.blk, c + j * b.blk);
}

// The recurrent product of step s, h (N x K) W^T or dgh (N x K) W with the rows a[s] of a
// step-major (steps, N, K) buffer, into `out` (N x cols): the packed kernel where `packed`
// holds the weight, else ATen's mm (only that path makes a tensor of the step's rows).
template <typename S, typename G>
void step_gemm(const Tensor& a, int64_t s, const Tensor& w, const PackedB* packed, Tensor& out) {
  RECORD_FUNCTION("fused_gru::step_gemm", std::vector<c10::IValue>());
  if constexpr (std::is_same_v<S, at::BFloat16> && std::is_same_v<G, float>) {
    const int64_t N = a.size(1), K = a.size(2);
    packed_gemm(a.data_ptr<S>() + s * N * K, N, K, *packed, out.data_ptr<float>(),
                out.stride(0));
  } else {
    at::mm_out(out, a.select(0, s), w);
  }
}

// Where step s of direction `dir` reads and writes row b's frame: the forward direction
// walks time in order, the reverse one each utterance backwards within its length `len`;
// steps past the length are padding (-1), which reads and writes nothing.
inline int64_t frame_of(int64_t dir, int64_t s, int64_t len) {
  return s >= len ? -1 : (dir == 0 ? s : len - 1 - s);
}

// One direction `dir` of D, forward, on batch-first rows: gi (N, T, D * 3H) = x W_ih^T of all
// directions; w_hh (3H, H); b_ih, b_hh (3H) in the accumulation type, added here in it (an
// addmm would first copy the bias into all N * T rows of gi). Writes this direction's
// columns of out (N, T, D * H), zero on padding, and, in step order, hs (T + 1, N, H)
// (hs[0] = 0; a padded step repeats the last state) and saved (T, N, 4H) =
// [r, z, n, h W_hn^T + b_hn] (unset on padded steps, which the backward skips).
// G: the type of the per-step GEMM's result (float when packed).
template <typename S, typename G>
void forward_direction(int64_t dir, const Tensor& gi, const int64_t* lens, const Tensor& w_hh,
                       const Tensor& b_ih, const Tensor& b_hh, Tensor& out, Tensor& hs,
                       Tensor& saved, const PackedB* packed) {
  const int64_t N = gi.size(0), T = gi.size(1), H = w_hh.size(1);
  const int64_t D3 = gi.size(2), DH = out.size(2);
  using A = acc_t<S>;
  Tensor gh = at::empty({N, 3 * H}, gi.options().dtype(c10::CppTypeToScalarType<G>::value));
  auto h = at::zeros({N, H}, gi.options().dtype(at::toOpMathType(gi.scalar_type())));
  auto w_t = w_hh.t();
  A* __restrict__ hf = h.data_ptr<A>();
  const A* __restrict__ BH = b_hh.data_ptr<A>();
  const A* __restrict__ BI = b_ih.data_ptr<A>();
  const S* __restrict__ GI = gi.data_ptr<S>() + dir * 3 * H;
  S* __restrict__ OUT = out.data_ptr<S>() + dir * H;
  for (int64_t s = 0; s < T; ++s) {
    step_gemm<S, G>(hs, s, w_t, packed, gh);
    RECORD_FUNCTION("fused_gru::gates", std::vector<c10::IValue>());
    const G* __restrict__ GH = gh.data_ptr<G>();
    S* __restrict__ HN = hs.data_ptr<S>() + (s + 1) * N * H;
    S* __restrict__ SV = saved.data_ptr<S>() + s * N * 4 * H;
    for (int64_t b = 0; b < N; ++b) {
      const int64_t t = frame_of(dir, s, lens[b]);
      A* __restrict__ hb = hf + b * H;
      S* __restrict__ hn_ = HN + b * H;
      if (t < 0) {  // padding: frame s of this row is zero, the state stays as it was
        S* __restrict__ o = OUT + (b * T + s) * DH;
#pragma omp simd
        for (int64_t j = 0; j < H; ++j) {
          o[j] = narrow<S>(A(0));
          hn_[j] = narrow<S>(hb[j]);
        }
        continue;
      }
      const S* __restrict__ gi_ = GI + (b * T + t) * D3;
      const G* __restrict__ gh_ = GH + b * 3 * H;
      S* __restrict__ sv = SV + b * 4 * H;
      S* __restrict__ o = OUT + (b * T + t) * DH;
#pragma omp simd
      for (int64_t j = 0; j < H; ++j) {
        A r = sigmoid<A>((A(gi_[j]) + BI[j]) + (A(gh_[j]) + BH[j]));
        A z = sigmoid<A>((A(gi_[H + j]) + BI[H + j]) + (A(gh_[H + j]) + BH[H + j]));
        A ghn = A(gh_[2 * H + j]) + BH[2 * H + j];
        A n = tanh_of<A>((A(gi_[2 * H + j]) + BI[2 * H + j]) + r * ghn);
        A hnew = n + z * (hb[j] - n);
        sv[j] = narrow<S>(r);
        sv[H + j] = narrow<S>(z);
        sv[2 * H + j] = narrow<S>(n);
        sv[3 * H + j] = narrow<S>(ghn);
        hb[j] = hnew;
        hn_[j] = narrow<S>(hnew);
        o[j] = narrow<S>(hnew);
      }
    }
  }
}

// One direction `dir` of D, backward through the recurrence: reads this direction's columns
// of dout (N, T, D * H), or all of dout (N, T, H) where the layer's output is the directions'
// sum (padding read as zero), writes its columns of dgi (N, T, D * 3H), the
// gradient of the input pre-activations in frame order, and dgh (T, N, 3H), that of the
// hidden pre-activations (before the reset gate for n) in step order; zero on padding.
template <typename S, typename G>
void backward_direction(int64_t dir, const Tensor& dout, const int64_t* lens,
                        const Tensor& w_hh, const Tensor& hs, const Tensor& saved, Tensor& dgi,
                        Tensor& dgh, Tensor& db_ih, Tensor& db_hh, const PackedB* packed) {
  const int64_t N = dout.size(0), T = dout.size(1), H = w_hh.size(1);
  const int64_t DH = dout.size(2), D3 = dgi.size(2);
  using A = acc_t<S>;
  auto dhz = at::zeros({N, H}, db_ih.options());
  Tensor back = at::zeros({N, H}, dout.options().dtype(c10::CppTypeToScalarType<G>::value));
  A* __restrict__ DHZ = dhz.data_ptr<A>();
  A* __restrict__ bi_r = db_ih.data_ptr<A>();  // (3H) sums over steps and rows
  A* __restrict__ bi_z = bi_r + H;
  A* __restrict__ bi_n = bi_r + 2 * H;
  A* __restrict__ bh_n = db_hh.data_ptr<A>() + 2 * H;  // r, z parts equal db_ih's
  const S* __restrict__ DO = dout.data_ptr<S>() + (DH == H ? 0 : dir * H);
  S* __restrict__ DGI = dgi.data_ptr<S>() + dir * 3 * H;
  for (int64_t s = T - 1; s >= 0; --s) {
    RECORD_FUNCTION("fused_gru::gates", std::vector<c10::IValue>());
    const G* __restrict__ BK = back.data_ptr<G>();  // dgh[s + 1] W_hh
    const S* __restrict__ SV = saved.data_ptr<S>() + s * N * 4 * H;
    const S* __restrict__ HP = hs.data_ptr<S>() + s * N * H;
    S* __restrict__ DGH = dgh.data_ptr<S>() + s * N * 3 * H;
    for (int64_t b = 0; b < N; ++b) {
      const int64_t t = frame_of(dir, s, lens[b]);
      S* __restrict__ dgr = DGH + b * 3 * H;
      S* __restrict__ dgz = dgr + H;
      S* __restrict__ dgn = dgr + 2 * H;
      if (t < 0) {  // padding: no gradient reaches it (its state is never read after it)
        S* __restrict__ dir_ = DGI + (b * T + s) * D3;
#pragma omp simd
        for (int64_t j = 0; j < 3 * H; ++j) {
          dir_[j] = narrow<S>(A(0));
          dgr[j] = narrow<S>(A(0));
        }
        continue;
      }
      const S* __restrict__ sr = SV + b * 4 * H;
      const S* __restrict__ sz = sr + H;
      const S* __restrict__ sn = sr + 2 * H;
      const S* __restrict__ sg = sr + 3 * H;
      S* __restrict__ dir_ = DGI + (b * T + t) * D3;
      S* __restrict__ diz = dir_ + H;
      S* __restrict__ din = dir_ + 2 * H;
      A* __restrict__ dhz_ = DHZ + b * H;
      const G* __restrict__ bk = BK + b * H;
      const S* __restrict__ dout_ = DO + (b * T + t) * DH;
      const S* __restrict__ hp = HP + b * H;
#pragma omp simd
      for (int64_t j = 0; j < H; ++j) {
        A d = dhz_[j] + A(bk[j]) + A(dout_[j]);
        A r = A(sr[j]), z = A(sz[j]), n = A(sn[j]), ghn = A(sg[j]);
        A dan = d * (A(1) - z) * (A(1) - n * n);
        A daz = d * (A(hp[j]) - n) * z * (A(1) - z);
        A dar = dan * ghn * r * (A(1) - r);
        dir_[j] = narrow<S>(dar);
        diz[j] = narrow<S>(daz);
        din[j] = narrow<S>(dan);
        dgr[j] = narrow<S>(dar);
        dgz[j] = narrow<S>(daz);
        dgn[j] = narrow<S>(dan * r);
        dhz_[j] = d * z;
        bi_r[j] += dar;
        bi_z[j] += daz;
        bi_n[j] += dan;
        bh_n[j] += dan * r;
      }
    }
    if (s > 0) step_gemm<S, G>(dgh, s, w_hh, packed, back);
  }
}

// Runs one direction's recurrence in dtype S: on the packed bf16 kernel where `packed` is
// asked for and available (AMX), else on ATen's mm. w is packed in this thread: oneDNN's
// brgemm and packing kernels are cached per thread.
template <typename F>
void with_recurrent_gemm(const Tensor& w, bool packed, bool transpose, const F& run) {
  const int64_t H = w.size(1);
  if (packed && w.scalar_type() == at::kBFloat16 && packed_gemm_available(H)) {
    PackedB pb = pack_b(transpose ? w.t().contiguous() : w, packed_block(H));
    run(std::integral_constant<bool, true>{}, &pb);
    at::native::cpublas::brgemm_release();
  } else {
    run(std::integral_constant<bool, false>{}, nullptr);
  }
}

}  // namespace

// Runs f(i) for the D directions: with `parallel`, each on its own thread, whose GEMMs are
// then single-threaded (at::parallel_for does not nest); else one after the other, each
// GEMM on all threads. Measured on 2 threads, BiGRU 512, N = 24: parallel 1.68x ATen's
// layer, sequential 1.22x.
template <typename F>
void for_directions(int64_t D, bool parallel, const F& f) {
  if (!parallel) {
    for (int64_t i = 0; i < D; ++i) f(i);
    return;
  }
  at::ThreadLocalState caller;  // the profiler's callbacks too: it then sees both threads
  at::parallel_for(0, D, 1, [&](int64_t b, int64_t e) {
    at::ThreadLocalStateGuard tls(caller);
    at::NoGradGuard no_grad;  // grad mode is thread-local: worker threads start with it on
    for (int64_t i = b; i < e; ++i) f(i);
  });
}

// Forward of one layer of D = 1 or 2 directions on batch-first x (N, T, In) with lengths
// lens (N, int64): the reverse direction reads each utterance backwards within its length, so
// no reversed copy of the input is made, and both directions' input projections are one GEMM.
// w_ih (D * 3H, In) and b_ih (D * 3H): the directions' stacked; w_hh, b_hh per direction; all
// in the compute dtype. Returns out (N, T, D * H) (directions side by side, zero on padding;
// with `sum`, (N, T, H): their sum), then per direction hs (T + 1, N, H) and saved
// (T, N, 4H) in step order.
std::vector<Tensor> forward(Tensor x, Tensor lens, Tensor w_ih, std::vector<Tensor> b_ih,
                            std::vector<Tensor> w_hh, std::vector<Tensor> b_hh, bool parallel,
                            bool packed, bool sum) {
  const int64_t D = w_hh.size(), N = x.size(0), T = x.size(1), H = w_hh[0].size(1);
  Tensor gi;
  {
    RECORD_FUNCTION("fused_gru::input_gemm", std::vector<c10::IValue>());
    gi = at::mm(x.reshape({N * T, -1}), w_ih.t()).view({N, T, D * 3 * H});
  }
  auto out = at::empty({N, T, D * H}, x.options());
  TORCH_CHECK(lens.dtype() == at::kLong && lens.is_contiguous() && lens.numel() == N,
              "fused GRU: lens must be ", N, " contiguous int64 lengths");
  const int64_t* L = lens.data_ptr<int64_t>();
  for (int64_t b = 0; b < N; ++b)  // the reverse direction indexes frames by them
    TORCH_CHECK(L[b] >= 0 && L[b] <= T, "fused GRU: length ", L[b], " outside [0, ", T, "]");
  std::vector<Tensor> hs(D), saved(D);
  for (int64_t i = 0; i < D; ++i) {
    hs[i] = at::empty({T + 1, N, H}, x.options());
    hs[i][0].zero_();
    saved[i] = at::empty({T, N, 4 * H}, x.options());
  }
  for_directions(D, parallel, [&](int64_t i) {
    auto acc = at::toOpMathType(x.scalar_type());
    auto bi = b_ih[i].to(acc).contiguous(), bh = b_hh[i].to(acc).contiguous();
    AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, x.scalar_type(), "gru_forward", [&] {
      with_recurrent_gemm(w_hh[i], packed, true, [&](auto use_packed, const PackedB* pb) {
        using G = std::conditional_t<decltype(use_packed)::value, float, scalar_t>;
        forward_direction<scalar_t, G>(i, gi, L, w_hh[i], bi, bh, out, hs[i], saved[i], pb);
      });
    });
  });
  std::vector<Tensor> res{sum && D == 2 ? out.view({N, T, 2, H}).sum(2) : out};
  for (int64_t i = 0; i < D; ++i) { res.push_back(hs[i]); res.push_back(saved[i]); }
  return res;
}

// Backward of `forward` from dout (N, T, D * H), or (N, T, H) for the directions' sum:
// {dx (N, T, In), dw_ih (D * 3H, In),
// db_ih (D * 3H)}, then per direction {dw_hh, db_hh} (weights' grads in the compute dtype,
// biases' in its accumulation type). dx sums the directions in its one GEMM.
std::vector<Tensor> backward(Tensor dout, Tensor x, Tensor lens, Tensor w_ih,
                             std::vector<Tensor> w_hh, std::vector<Tensor> hs,
                             std::vector<Tensor> saved, bool parallel, bool packed) {
  const int64_t D = w_hh.size(), N = x.size(0), T = x.size(1), H = w_hh[0].size(1);
  dout = dout.to(x.scalar_type()).contiguous();
  const int64_t* L = lens.data_ptr<int64_t>();
  auto dgi = at::empty({N, T, D * 3 * H}, x.options());
  auto acc = x.options().dtype(at::toOpMathType(x.scalar_type()));
  std::vector<Tensor> dgh(D), db_ih(D), db_hh(D);
  for (int64_t i = 0; i < D; ++i) {
    dgh[i] = at::empty({T, N, 3 * H}, x.options());
    db_ih[i] = at::zeros({3 * H}, acc);
    db_hh[i] = at::zeros({3 * H}, acc);
  }
  for_directions(D, parallel, [&](int64_t i) {
    AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, x.scalar_type(), "gru_backward", [&] {
      with_recurrent_gemm(w_hh[i], packed, false, [&](auto use_packed, const PackedB* pb) {
        using G = std::conditional_t<decltype(use_packed)::value, float, scalar_t>;
        backward_direction<scalar_t, G>(i, dout, L, w_hh[i], hs[i], saved[i], dgi, dgh[i],
                                        db_ih[i], db_hh[i], pb);
      });
    });
  });
  // The weight gradients sum over all N * T rows: dW = g^T a. oneDNN runs g^T as a transposed
  // operand at ~half the speed of a row-major one (bf16 on AMX), so a^T, the narrower of the
  // two, is laid out row-major and dW^T = a^T g is returned as a transposed view (measured:
  // dW_ih 1.4-1.7x faster with the copy included).
  RECORD_FUNCTION("fused_gru::weight_gemms", std::vector<c10::IValue>());
  auto gi2 = dgi.view({N * T, D * 3 * H});
  auto by_rows = [](const Tensor& g, const Tensor& a) { return at::mm(a.t().contiguous(), g).t(); };
  std::vector<Tensor> res{at::mm(gi2, w_ih).view({N, T, -1}),
                          by_rows(gi2, x.reshape({N * T, -1})), at::cat(db_ih)};
  for (int64_t i = 0; i < D; ++i) {
    auto gh2 = dgh[i].view({T * N, 3 * H});
    res.push_back(by_rows(gh2, hs[i].slice(0, 0, T).reshape({T * N, H})));
    db_hh[i].slice(0, 0, 2 * H).copy_(db_ih[i].slice(0, 0, 2 * H));
    res.push_back(db_hh[i]);
  }
  return res;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &forward);
  m.def("backward", &backward);
  m.def("packed_gemm_available", &packed_gemm_available);
}
