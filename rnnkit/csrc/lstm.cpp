// LSTM over a whole sequence, forward and backward through time (gate order i, f, g, o).
//
// Tensors (T steps, B batch, H hidden):
//   xp       (T, B, 4H)   x W_ih^T + b_ih                             input, read only
//   h0, c0   (B, H)       initial states                               input, read only
//   w_hh     (4H, H), b_hh (4H) | None
//   hs, cs   (T, B, H)    h_t and c_t: the states, saved for backward
//   gates    (T, B, 4H)   post-activation [i, f, g, o]: saved ("gates") and traced
//   tanh_c   (T, B, H)    tanh(c_t): saved ("tanh_c")
//            Without save, gates and tanh_c are (B, .) workspaces reused by every step.  With
//            save, their rows of padded steps are zero (written, so that runs are reproducible).
//   dg       (T, B, 4H)   backward: d pre-activation = d_xp, returned; also the rows of the
//                         post-loop GEMM dW_hh = dg^T [h0; hs[:-1]]
//   dh, dh_prev (B, H)    backward: carried dh and the next one (backward_steps, loop.h)
//   dc       (B, H)       backward: carried dc, updated in place
// Aliasing: the step GEMM writes h_{t-1} W_hh^T into gates[t], which the gate pass overwrites
// in place with the activations.
#include "activations.h"
#include "gemm.h"
#include "loop.h"
#include "rnn.h"

#include <ATen/Dispatch.h>

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
  const Tensor bias_t = or_zeros(a.rec[1], G, a.xp.options());
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
      } else {                                                // padded: the state stays
        std::memcpy(h, hp + b * H, H * sizeof(T));
        std::memcpy(c, cp + b * H, H * sizeof(T));
        if (a.save) std::fill_n(gt + b * G, G, T(0)), std::fill_n(tct + b * H, H, T(0));
      }
    });
  }
}

// Returns dh_0; dc_t carries dc back in place to dc_0.
template <typename T>
Tensor backward_impl(const BwdArgs& a, const Tensor& dg_t, const Tensor& dc_t) {
  const int64_t B = a.states[0].size(1), H = a.states[0].size(2), G = 4 * H;
  const T *cs = a.states[1].data_ptr<T>(), *c0 = a.state0[1].data_ptr<T>();
  const T *gates = a.saved[0].data_ptr<T>(), *tanh_c = a.saved[1].data_ptr<T>();
  T *dg = dg_t.data_ptr<T>(), *dc = dc_t.data_ptr<T>();
  const StepWeight<T> w_n(Op::N, B, H, G, a.rec[0]->data_ptr<T>(), H);   // dg W_hh
  return backward_steps<T>(
      a, G, {{dg, G}},
      [&](int64_t t, int64_t b, const T* dh, T* dh_prev) {
        const int64_t r = (t * B + b) * H;
        const T* c_prev = t ? cs + r - B * H : c0 + b * H;
        backward_row(H, gates + (t * B + b) * G, tanh_c + r, c_prev, dh, dc + b * H, dg + (t * B + b) * G, dh_prev);
      },
      [&](int64_t t, T* dh_prev) { w_n.mul(dg + t * B * G, G, T(1), dh_prev, H); });   // += dg_t W_hh
}

Tensors lstm_buffers(const Spec&, int64_t T, int64_t B, int64_t H, const OptTensors&, bool save,
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
  const Tensors bufs = lstm_buffers(sp, Tn, B, H, a.rec, a.save, a.xp.options());
  lstm_run(sp, a, bufs);
  if (!a.save) return {{bufs[0], bufs[1]}, {}};
  return {{bufs[0], bufs[1]}, {bufs[2].view({Tn, B, 4 * H}), bufs[3].view({Tn, B, H})}};
}

BwdResult lstm_backward(const Spec&, const BwdArgs& a) {
  const Tensor& hs = a.states[0];
  const int64_t Tn = hs.size(0), B = hs.size(1), H = hs.size(2);
  const auto opt = hs.options();
  const Tensor dg = empty_seq({Tn, B, 4 * H}, opt), dc = final_grad(a, 1);
  Tensor dh;
  Tensor dw = at::empty({4 * H, H}, opt);
  c10::optional<Tensor> db;
  if (a.rec[1].has_value()) db = at::empty({4 * H}, opt);
  AT_DISPATCH_FLOATING_TYPES(hs.scalar_type(), "lstm_backward", [&] {
    dh = backward_impl<scalar_t>(a, dg, dc);
    weight_grad<scalar_t>(Tn, B, 4 * H, H, dg.data_ptr<scalar_t>(), 4 * H,
                          a.state0[0].data_ptr<scalar_t>(), hs.data_ptr<scalar_t>(), dw.data_ptr<scalar_t>());
    if (db) col_sum<scalar_t>(Tn * B, 4 * H, dg.data_ptr<scalar_t>(), 4 * H, db->data_ptr<scalar_t>());
  });
  return {dg, {dh, dc}, {dw, db}};
}

std::vector<Sym> lstm_saved(const Spec&) { return {kGH, kH}; }      // gates, tanh_c

}  // namespace

RNNKIT_REGISTER_CELL(Cell{"lstm", /*id=*/2, /*gates=*/4, /*n_states=*/2, lstm_forward, lstm_backward, lstm_buffers,
                          lstm_run, /*states=*/{kH, kH},
                          /*rec=*/{{"weight_hh", {kGH, kH}, false}, {"bias_hh", {kGH}, true}}, lstm_saved});

}  // namespace rnnkit
