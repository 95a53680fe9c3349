// GRU over a whole sequence, forward and backward through time (gate order r, z, n), in
// torch's form (reset_after: n = tanh(xn + r * (h W_hn^T + b_hn))) and in the original form of
// Cho et al. (n = tanh(xn + (r * h) W_hn^T + b_hn)).
//
// Tensors (T steps, B batch, H hidden):
//   xp       (T, B, 3H)   x W_ih^T + b_ih                             input, read only
//   h0       (B, H), w_hh (3H, H), b_hh (3H) | None                   inputs, read only
//   hs       (T, B, H)    h_t: the state, saved for backward
//   gates    (T, B, 3H)   post-activation [r, z, n]: saved ("gates") and traced
//   hn       (T, B, H)    torch form only: h W_hn^T + b_hn, saved ("hn") for dr
//            Without save, gates and hn are (B, .) workspaces reused by every step.
//   hw       (B, 3H)      forward workspace: h_{t-1} W_hh^T (original form: (B, 2H) for r, z)
//   rh, hwn  (B, H)       original form, forward workspaces: r * h_{t-1} and rh W_hn^T
//   dx       (T, B, 3H)   backward: d pre-activation of xp = d_xp, returned
//   drn      (T, B, H)    torch form, backward: d(h W_hn^T) = dan * r, the n rows of the
//                         recurrent gradient (the r, z rows are those of dx)
//   rhs      (T, B, H)    original form, backward: r * h_{t-1}, the input of W_hn
//   du       (B, H)       original form, backward workspace: d(r * h) = dan W_hn
//   dh, dn   (B, H)       backward: carried dh and the next one (swapped per step)
// Post-loop GEMMs: dW_hh[:2H] = dx[:, :2H]^T [h0; hs[:-1]] and dW_hh[2H:] = drn^T [h0; hs[:-1]]
// (torch form) or dx[:, 2H:]^T rhs (original form).  Nothing aliases.
#include "rnn.h"

#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>

namespace rnnkit {
namespace {

struct Dims {
  int64_t T, B, H;
};

// Gate passes of one row, plain functions of restrict pointers so that gcc vectorises them.
// Torch form: u = h_{t-1} W_hh^T (3H).
template <typename T>
void after_row(int64_t H, const T* __restrict x, const T* __restrict u, const T* __restrict bias,
               const T* __restrict h_prev, T* __restrict g, T* __restrict hn, T* __restrict h) {
  for (int64_t j = 0; j < H; ++j) {
    const T r = sigmoid(x[j] + u[j] + bias[j]);
    const T z = sigmoid(x[H + j] + u[H + j] + bias[H + j]);
    const T m = u[2 * H + j] + bias[2 * H + j];
    const T n = tanh_(x[2 * H + j] + r * m);
    g[j] = r, g[H + j] = z, g[2 * H + j] = n, hn[j] = m;
    h[j] = (T(1) - z) * n + z * h_prev[j];
  }
}

// Original form, first pass: r and z from u = h_{t-1} W_hrz^T (2H), and r * h_{t-1}.
template <typename T>
void before_row_rz(int64_t H, const T* __restrict x, const T* __restrict u, const T* __restrict bias,
                   const T* __restrict h_prev, T* __restrict g, T* __restrict rh) {
  for (int64_t j = 0; j < H; ++j) {
    const T r = sigmoid(x[j] + u[j] + bias[j]);
    g[j] = r, g[H + j] = sigmoid(x[H + j] + u[H + j] + bias[H + j]);
    rh[j] = r * h_prev[j];
  }
}

// Original form, second pass: n from m = (r * h_{t-1}) W_hn^T, and h_t.
template <typename T>
void before_row_n(int64_t H, const T* __restrict x, const T* __restrict m, const T* __restrict bias,
                  const T* __restrict h_prev, T* __restrict g, T* __restrict h) {
  for (int64_t j = 0; j < H; ++j) {
    const T n = tanh_(x[2 * H + j] + m[j] + bias[2 * H + j]);
    const T z = g[H + j];
    g[2 * H + j] = n;
    h[j] = (T(1) - z) * n + z * h_prev[j];
  }
}

// Shared by both forms: d_xp of z and n, and the direct path dh_{t-1} = dh z.
template <typename T>
void zn_grads(int64_t H, const T* __restrict g, const T* __restrict h_prev, const T* __restrict gh,
              T* __restrict dxr, T* __restrict next) {
  for (int64_t j = 0; j < H; ++j) {
    const T z = g[H + j], n = g[2 * H + j];
    dxr[2 * H + j] = gh[j] * (T(1) - z) * (T(1) - n * n);
    dxr[H + j] = gh[j] * (h_prev[j] - n) * z * (T(1) - z);
    next[j] = gh[j] * z;
  }
}

// Torch form: dr through hn, and the n rows of the recurrent gradient dan * r.
template <typename T>
void after_r_grads(int64_t H, const T* __restrict g, const T* __restrict hn, T* __restrict dxr,
                   T* __restrict drn) {
  for (int64_t j = 0; j < H; ++j) {
    const T r = g[j], dan = dxr[2 * H + j];
    dxr[j] = dan * hn[j] * r * (T(1) - r);
    drn[j] = dan * r;
  }
}

// Original form: dr and dh_{t-1} through du = d(r * h_{t-1}).
template <typename T>
void before_r_grads(int64_t H, const T* __restrict g, const T* __restrict h_prev, const T* __restrict du,
                    T* __restrict dxr, T* __restrict next) {
  for (int64_t j = 0; j < H; ++j) {
    const T r = g[j];
    dxr[j] = du[j] * h_prev[j] * r * (T(1) - r);
    next[j] += du[j] * r;
  }
}

template <typename T>
void mul(int64_t n, const T* __restrict a, const T* __restrict b, T* __restrict out) {
  for (int64_t j = 0; j < n; ++j) out[j] = a[j] * b[j];
}

template <typename T>
void forward_after(const FwdArgs& a, const Dims& d, const T* bias, const Tensors& bufs) {
  const int64_t B = d.B, H = d.H, G = 3 * H;
  const Mask mask(a.mask, B);
  const Tensor &hs = bufs[0], &gates = bufs[1], &hn = bufs[2], &hw_t = bufs[3];
  const T *xp = a.xp.data_ptr<T>(), *w = a.rec[0]->data_ptr<T>(), *h0 = a.state0[0].data_ptr<T>();
  T *H_ = hs.data_ptr<T>(), *G_ = gates.data_ptr<T>(), *HN = hn.data_ptr<T>(), *hw = hw_t.data_ptr<T>();
  const StepWeight<T> w_t(Op::T, B, G, H, w, H);              // h W_hh^T
  for (int64_t t = 0; t < d.T; ++t) {
    const T* hp = t ? H_ + (t - 1) * B * H : h0;
    T* gt = a.save ? G_ + t * B * G : G_;
    T* hnt = a.save ? HN + t * B * H : HN;
    w_t.mul(hp, H, T(0), hw, G);                              // (B, 3H)
    for_rows(B, G, [&](int64_t b) {
      T* h = H_ + (t * B + b) * H;
      if (mask.valid(t, b))
        after_row(H, xp + (t * B + b) * G, hw + b * G, bias, hp + b * H, gt + b * G, hnt + b * H, h);
      else
        std::memcpy(h, hp + b * H, H * sizeof(T));
    });
  }
}

template <typename T>
void forward_before(const FwdArgs& a, const Dims& d, const T* bias, const Tensors& bufs) {
  const int64_t B = d.B, H = d.H, G = 3 * H;
  const Mask mask(a.mask, B);
  const Tensor &hs = bufs[0], &gates = bufs[1], &hw_t = bufs[3], &rh_t = bufs[4], &hwn_t = bufs[5];
  const T *xp = a.xp.data_ptr<T>(), *w = a.rec[0]->data_ptr<T>(), *h0 = a.state0[0].data_ptr<T>();
  T *H_ = hs.data_ptr<T>(), *G_ = gates.data_ptr<T>();
  T *hw = hw_t.data_ptr<T>(), *rh = rh_t.data_ptr<T>(), *hwn = hwn_t.data_ptr<T>();
  const StepWeight<T> w_rz(Op::T, B, 2 * H, H, w, H), w_n(Op::T, B, H, H, w + 2 * H * H, H);
  for (int64_t t = 0; t < d.T; ++t) {
    const T* hp = t ? H_ + (t - 1) * B * H : h0;
    T* gt = a.save ? G_ + t * B * G : G_;
    w_rz.mul(hp, H, T(0), hw, 2 * H);                          // r, z rows (B, 2H)
    for_rows(B, G, [&](int64_t b) {
      before_row_rz(H, xp + (t * B + b) * G, hw + b * 2 * H, bias, hp + b * H, gt + b * G, rh + b * H);
    });
    w_n.mul(rh, H, T(0), hwn, H);                               // (r * h) W_hn^T
    for_rows(B, G, [&](int64_t b) {
      T* h = H_ + (t * B + b) * H;
      if (mask.valid(t, b))
        before_row_n(H, xp + (t * B + b) * G, hwn + b * H, bias, hp + b * H, gt + b * G, h);
      else
        std::memcpy(h, hp + b * H, H * sizeof(T));
    });
  }
}

template <typename T>
void backward_after(const BwdArgs& a, const Dims& d, Tensor& dx, Tensor& drn, Tensor& dh, Tensor& dn) {
  const int64_t B = d.B, H = d.H, G = 3 * H;
  const Mask mask(a.mask, B);
  const T *H_ = a.states[0].data_ptr<T>(), *h0 = a.state0[0].data_ptr<T>();
  const T *G_ = a.saved[0].data_ptr<T>(), *HN = a.saved[1].data_ptr<T>(), *w = a.rec[0]->data_ptr<T>();
  const GradOut<T> dout(a.d_out);
  T *dX = dx.data_ptr<T>(), *dR = drn.data_ptr<T>();
  const StepWeight<T> w_rz(Op::N, B, H, 2 * H, w, H), w_n(Op::N, B, H, H, w + 2 * H * H, H);
  for (int64_t t = d.T - 1; t >= 0; --t) {
    const T* hp = t ? H_ + (t - 1) * B * H : h0;
    T* g_in = dh.data_ptr<T>();
    T* g_out = dn.data_ptr<T>();
    for_rows(B, G, [&](int64_t b) {
      const int64_t r = (t * B + b) * H;
      T *dxr = dX + (t * B + b) * G, *drr = dR + r, *gh = g_in + b * H, *next = g_out + b * H;
      dout.add(t, b, H, gh);
      if (!mask.valid(t, b)) {
        skip_row(H, gh, next, G, dxr);
        std::fill(drr, drr + H, T(0));
        return;
      }
      const T* g = G_ + (t * B + b) * G;
      zn_grads(H, g, hp + b * H, gh, dxr, next);
      after_r_grads(H, g, HN + r, dxr, drr);
    });
    T* dxt = dX + t * B * G;
    w_rz.mul(dxt, G, T(1), g_out, H);                         // r, z rows
    w_n.mul(dR + t * B * H, H, T(1), g_out, H);                // n rows
    std::swap(dh, dn);
  }
}

template <typename T>
void backward_before(const BwdArgs& a, const Dims& d, Tensor& dx, Tensor& rhs, Tensor& dh, Tensor& dn) {
  const int64_t B = d.B, H = d.H, G = 3 * H;
  const Mask mask(a.mask, B);
  const T *H_ = a.states[0].data_ptr<T>(), *h0 = a.state0[0].data_ptr<T>();
  const T *G_ = a.saved[0].data_ptr<T>(), *w = a.rec[0]->data_ptr<T>();
  const GradOut<T> dout(a.d_out);
  Tensor du_t = at::empty({B, H}, dx.options());
  T *dX = dx.data_ptr<T>(), *RH = rhs.data_ptr<T>(), *du = du_t.data_ptr<T>();
  const StepWeight<T> w_rz(Op::N, B, H, 2 * H, w, H), w_n(Op::N, B, H, H, w + 2 * H * H, H);
  for (int64_t t = d.T - 1; t >= 0; --t) {
    const T* hp = t ? H_ + (t - 1) * B * H : h0;
    T* g_in = dh.data_ptr<T>();
    T* g_out = dn.data_ptr<T>();
    T* dxt = dX + t * B * G;
    for_rows(B, G, [&](int64_t b) {
      const int64_t r = (t * B + b) * H;
      T *dxr = dxt + b * G, *rh = RH + r, *gh = g_in + b * H, *next = g_out + b * H;
      dout.add(t, b, H, gh);
      if (!mask.valid(t, b)) {
        skip_row(H, gh, next, G, dxr);
        std::fill(rh, rh + H, T(0));
        return;
      }
      const T* g = G_ + (t * B + b) * G;
      zn_grads(H, g, hp + b * H, gh, dxr, next);
      mul(H, g, hp + b * H, rh);
    });
    w_n.mul(dxt + 2 * H, G, T(0), du, H);                      // d(r * h)
    for_rows(B, G, [&](int64_t b) {
      if (mask.valid(t, b))
        before_r_grads(H, G_ + (t * B + b) * G, hp + b * H, du + b * H, dxt + b * G, g_out + b * H);
    });
    w_rz.mul(dxt, G, T(1), g_out, H);                          // r, z rows
    std::swap(dh, dn);
  }
}

}  // namespace

// [hs, gates, hn | undefined, hw, rh | undefined, hwn | undefined] (see the header comment).
Tensors gru_buffers(const Spec& sp, int64_t T, int64_t B, int64_t H, int64_t, bool save,
                    const at::TensorOptions& opt) {
  const int64_t rows = save ? T * B : B;
  Tensors bufs{empty_seq({T, B, H}, opt), empty_seq({rows, 3 * H}, opt)};
  if (sp.reset_after) return {bufs[0], bufs[1], empty_seq({rows, H}, opt), at::empty({B, 3 * H}, opt)};
  return {bufs[0], bufs[1], Tensor(), at::empty({B, 2 * H}, opt), at::empty({B, H}, opt), at::empty({B, H}, opt)};
}

void gru_run(const Spec& sp, const FwdArgs& a, const Tensors& bufs) {
  const Dims d{a.xp.size(0), a.xp.size(1), a.xp.size(2) / 3};
  const Tensor bias_t = a.rec[1].has_value() ? *a.rec[1] : at::zeros({3 * d.H}, a.xp.options());
  AT_DISPATCH_FLOATING_TYPES(a.xp.scalar_type(), "gru_forward", [&] {
    if (sp.reset_after)
      forward_after<scalar_t>(a, d, bias_t.data_ptr<scalar_t>(), bufs);
    else
      forward_before<scalar_t>(a, d, bias_t.data_ptr<scalar_t>(), bufs);
  });
}

FwdResult gru_forward(const Spec& sp, const FwdArgs& a) {
  const Dims d{a.xp.size(0), a.xp.size(1), a.xp.size(2) / 3};
  const Tensors bufs = gru_buffers(sp, d.T, d.B, d.H, 0, a.save, a.xp.options());
  gru_run(sp, a, bufs);
  if (!a.save) return {{bufs[0]}, {}};
  const Tensor gates = bufs[1].view({d.T, d.B, 3 * d.H});
  if (!sp.reset_after) return {{bufs[0]}, {gates}};
  return {{bufs[0]}, {gates, bufs[2].view({d.T, d.B, d.H})}};
}

BwdResult gru_backward(const Spec& sp, const BwdArgs& a) {
  const Tensor& hs = a.states[0];
  const Dims d{hs.size(0), hs.size(1), hs.size(2)};
  const int64_t H = d.H, G = 3 * H;
  const auto opt = hs.options();
  Tensor dx = empty_seq({d.T, d.B, G}, opt);
  Tensor aux = empty_seq({d.T, d.B, H}, opt);                 // drn (torch form) or rhs (original)
  Tensor dh = a.d_final[0].has_value() ? a.d_final[0]->clone() : at::zeros({d.B, H}, opt);
  Tensor dn = at::empty({d.B, H}, opt);
  Tensor dw = at::empty({G, H}, opt);
  c10::optional<Tensor> db;
  if (a.rec[1].has_value()) db = at::empty({G}, opt);
  AT_DISPATCH_FLOATING_TYPES(hs.scalar_type(), "gru_backward", [&] {
    using T = scalar_t;
    const T *X = dx.data_ptr<T>(), *A = aux.data_ptr<T>();
    const T *h0 = a.state0[0].data_ptr<T>(), *H_ = hs.data_ptr<T>();
    T* W = dw.data_ptr<T>();
    const int64_t R = d.T * d.B;
    if (sp.reset_after) {
      backward_after<T>(a, d, dx, aux, dh, dn);
      weight_grad<T>(d.T, d.B, H, H, A, H, h0, H_, W + 2 * H * H);
    } else {
      backward_before<T>(a, d, dx, aux, dh, dn);
      gemm(Op::T, Op::N, H, H, R, X + 2 * H, G, A, H, T(0), W + 2 * H * H, H);
    }
    weight_grad<T>(d.T, d.B, 2 * H, H, X, G, h0, H_, W);
    if (db) {
      T* dbp = db->data_ptr<T>();
      col_sum<T>(R, 2 * H, X, G, dbp);
      if (sp.reset_after)
        col_sum<T>(R, H, A, H, dbp + 2 * H);
      else
        col_sum<T>(R, H, X + 2 * H, G, dbp + 2 * H);
    }
  });
  return {dx, {dh}, {dw, db}};
}

}  // namespace rnnkit
