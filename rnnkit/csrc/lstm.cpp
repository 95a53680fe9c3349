// LSTM over a whole sequence, forward and backward through time (gate order i, f, g, o).
//
// Tensors (T steps, B batch, H hidden):
//   xp       (T, B, 4H)   x W_ih^T + b_ih                             input, read only
//   h0, c0   (B, H)       initial states                               input, read only
//   w_hh     (4H, H), b_hh (4H) | None
//   hs, cs   (T, B, H)    h_t and c_t: the states, saved for backward
//   gates    (T, B, 4H)   post-activation [i, f, g, o]: saved ("gates") and traced
//   tanh_c   (T, B, H)    tanh(c_t): saved ("tanh_c")
//            Without save, gates and tanh_c are (B, .) workspaces reused by every step.
//   dg       (T, B, 4H)   backward: d pre-activation = d_xp, returned; also the rows of the
//                         post-loop GEMM dW_hh = dg^T [h0; hs[:-1]]
//   dh, dn   (B, H)       backward: carried dh and the next one (swapped per step)
//   dc       (B, H)       backward: carried dc, updated in place
// Aliasing: the step GEMM writes h_{t-1} W_hh^T into gates[t], which the gate pass overwrites
// in place with the activations.
#include "rnn.h"

#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>

namespace rnnkit {
namespace {

// Gate pass of one row (plain function of restrict pointers, so that gcc vectorises it):
// g holds h_{t-1} W_hh^T on entry and the activated gates on exit.
template <typename T>
void forward_row(int64_t H, T* __restrict g, const T* __restrict x, const T* __restrict bias,
                 const T* __restrict c_prev, T* __restrict c, T* __restrict tc, T* __restrict h) {
  for (int64_t j = 0; j < H; ++j) {
    const T i = sigmoid(g[j] + x[j] + bias[j]);
    const T f = sigmoid(g[H + j] + x[H + j] + bias[H + j]);
    const T n = tanh_(g[2 * H + j] + x[2 * H + j] + bias[2 * H + j]);
    const T o = sigmoid(g[3 * H + j] + x[3 * H + j] + bias[3 * H + j]);
    const T cn = f * c_prev[j] + i * n;
    const T tcn = tanh_(cn);
    g[j] = i, g[H + j] = f, g[2 * H + j] = n, g[3 * H + j] = o;
    c[j] = cn, tc[j] = tcn, h[j] = o * tcn;
  }
}

// Gradient of one row: d (4H) from dh = gh and the carried dc (updated in place to dc_{t-1}).
template <typename T>
void backward_row(int64_t H, const T* __restrict g, const T* __restrict tc, const T* __restrict c_prev,
                  const T* __restrict gh, T* __restrict gc, T* __restrict d, T* __restrict next) {
  for (int64_t j = 0; j < H; ++j) {
    const T i = g[j], f = g[H + j], n = g[2 * H + j], o = g[3 * H + j];
    const T dct = gc[j] + gh[j] * o * (T(1) - tc[j] * tc[j]);
    d[j] = dct * n * i * (T(1) - i);
    d[H + j] = dct * c_prev[j] * f * (T(1) - f);
    d[2 * H + j] = dct * i * (T(1) - n * n);
    d[3 * H + j] = gh[j] * tc[j] * o * (T(1) - o);
    gc[j] = dct * f;                                         // the constant error carousel
    next[j] = T(0);
  }
}

template <typename T>
void forward_impl(const FwdArgs& a, const Tensor& hs, const Tensor& cs, const Tensor& gates,
                  const Tensor& tanh_c) {
  const int64_t Tn = a.xp.size(0), B = a.xp.size(1), H = a.xp.size(2) / 4, G = 4 * H;
  const Mask mask(a.mask, B);
  const Tensor bias_t = a.rec[1].has_value() ? *a.rec[1] : at::zeros({G}, a.xp.options());
  const T *xp = a.xp.data_ptr<T>(), *w = a.rec[0]->data_ptr<T>(), *bias = bias_t.data_ptr<T>();
  const T *h0 = a.state0[0].data_ptr<T>(), *c0 = a.state0[1].data_ptr<T>();
  T *H_ = hs.data_ptr<T>(), *C_ = cs.data_ptr<T>(), *G_ = gates.data_ptr<T>(), *TC = tanh_c.data_ptr<T>();
  const StepWeight<T> w_t(Op::T, B, G, H, w, H);              // h W_hh^T
  for (int64_t t = 0; t < Tn; ++t) {
    const T* hp = t ? H_ + (t - 1) * B * H : h0;
    const T* cp = t ? C_ + (t - 1) * B * H : c0;
    T* gt = a.save ? G_ + t * B * G : G_;                     // (B, 4H)
    T* tct = a.save ? TC + t * B * H : TC;                    // (B, H)
    w_t.mul(hp, H, T(0), gt, G);
    for_rows(B, G, [&](int64_t b) {
      T* h = H_ + (t * B + b) * H;
      T* c = C_ + (t * B + b) * H;
      if (mask.valid(t, b)) {
        forward_row(H, gt + b * G, xp + (t * B + b) * G, bias, cp + b * H, c, tct + b * H, h);
      } else {
        std::memcpy(h, hp + b * H, H * sizeof(T));
        std::memcpy(c, cp + b * H, H * sizeof(T));
      }
    });
  }
}

template <typename T>
void backward_impl(const BwdArgs& a, Tensor& dg, Tensor& dh, Tensor& dn, Tensor& dc) {
  const int64_t Tn = a.states[0].size(0), B = a.states[0].size(1), H = a.states[0].size(2), G = 4 * H;
  const Mask mask(a.mask, B);
  const T *C_ = a.states[1].data_ptr<T>(), *c0 = a.state0[1].data_ptr<T>();
  const T *G_ = a.saved[0].data_ptr<T>(), *TC = a.saved[1].data_ptr<T>();
  const T* w = a.rec[0]->data_ptr<T>();
  const GradOut<T> dout(a.d_out);
  T *dG = dg.data_ptr<T>(), *dC = dc.data_ptr<T>();
  const StepWeight<T> w_n(Op::N, B, H, G, w, H);              // dg W_hh
  for (int64_t t = Tn - 1; t >= 0; --t) {
    T* dgt = dG + t * B * G;                                  // (B, 4H)
    T* g_in = dh.data_ptr<T>();
    T* g_out = dn.data_ptr<T>();
    const T* cp = t ? C_ + (t - 1) * B * H : c0;
    for_rows(B, G, [&](int64_t b) {
      const int64_t r = (t * B + b) * H;
      T *d = dgt + b * G, *next = g_out + b * H, *gh = g_in + b * H;
      dout.add(t, b, H, gh);
      if (mask.valid(t, b))
        backward_row(H, G_ + (t * B + b) * G, TC + r, cp + b * H, gh, dC + b * H, d, next);
      else
        skip_row(H, gh, next, G, d);
    });
    w_n.mul(dgt, G, T(1), g_out, H);                          // dh_{t-1} += dg_t W_hh
    std::swap(dh, dn);
  }
}

}  // namespace

Tensors lstm_buffers(const Spec&, int64_t T, int64_t B, int64_t H, int64_t, bool save,
                     const at::TensorOptions& opt) {
  const int64_t rows = save ? T * B : B;
  return {empty_seq({T, B, H}, opt), empty_seq({T, B, H}, opt), empty_seq({rows, 4 * H}, opt),
          empty_seq({rows, H}, opt)};
}

void lstm_run(const Spec&, const FwdArgs& a, const Tensors& bufs) {
  AT_DISPATCH_FLOATING_TYPES(a.xp.scalar_type(), "lstm_forward",
                             [&] { forward_impl<scalar_t>(a, bufs[0], bufs[1], bufs[2], bufs[3]); });
}

FwdResult lstm_forward(const Spec& sp, const FwdArgs& a) {
  const int64_t Tn = a.xp.size(0), B = a.xp.size(1), H = a.xp.size(2) / 4;
  const Tensors bufs = lstm_buffers(sp, Tn, B, H, 0, a.save, a.xp.options());
  lstm_run(sp, a, bufs);
  if (!a.save) return {{bufs[0], bufs[1]}, {}};
  return {{bufs[0], bufs[1]}, {bufs[2].view({Tn, B, 4 * H}), bufs[3].view({Tn, B, H})}};
}

BwdResult lstm_backward(const Spec&, const BwdArgs& a) {
  const Tensor& hs = a.states[0];
  const int64_t Tn = hs.size(0), B = hs.size(1), H = hs.size(2);
  const auto opt = hs.options();
  Tensor dg = empty_seq({Tn, B, 4 * H}, opt);
  Tensor dh = a.d_final[0].has_value() ? a.d_final[0]->clone() : at::zeros({B, H}, opt);
  Tensor dc = a.d_final[1].has_value() ? a.d_final[1]->clone() : at::zeros({B, H}, opt);
  Tensor dn = at::empty({B, H}, opt);
  Tensor dw = at::empty({4 * H, H}, opt);
  c10::optional<Tensor> db;
  if (a.rec[1].has_value()) db = at::empty({4 * H}, opt);
  AT_DISPATCH_FLOATING_TYPES(hs.scalar_type(), "lstm_backward", [&] {
    backward_impl<scalar_t>(a, dg, dh, dn, dc);
    weight_grad<scalar_t>(Tn, B, 4 * H, H, dg.data_ptr<scalar_t>(), 4 * H,
                          a.state0[0].data_ptr<scalar_t>(), hs.data_ptr<scalar_t>(), dw.data_ptr<scalar_t>());
    if (db) col_sum<scalar_t>(Tn * B, 4 * H, dg.data_ptr<scalar_t>(), 4 * H, db->data_ptr<scalar_t>());
  });
  return {dg, {dh, dc}, {dw, db}};
}

}  // namespace rnnkit
