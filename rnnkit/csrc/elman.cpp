// Elman (simple RNN) over a whole sequence, forward and backward through time.
//
// Tensors (T steps, B batch, H hidden):
//   xp      (T, B, H)    x W_ih^T + b_ih                      input, read only
//   h0      (B, H)       initial state                        input, read only
//   w_hh    (H, H)       recurrent weights                     input, read only
//   b_hh    (H) | None
//   hs      (T, B, H)    h_t, the only thing saved for backward (plus h0)
//   da      (T, B, H)    backward: d pre-activation = d_xp, returned; also the rows of the
//                        single post-loop GEMM dW_hh = da^T [h0; hs[:-1]]
//   dh, dn  (B, H)       backward workspaces: carried dh and the next one (swapped per step)
// Aliasing: each step's GEMM writes h_{t-1} W_hh^T straight into hs[t], which the gate pass
// then overwrites in place with h_t; nothing else aliases.
#include "rnn.h"

#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>

namespace rnnkit {
namespace {

// The gate passes are plain functions of restrict pointers: inside the row lambdas gcc does
// not vectorise them.
template <typename T>
void forward_row(int64_t H, bool is_relu, T* __restrict y, const T* __restrict x, const T* __restrict bias) {
  for (int64_t j = 0; j < H; ++j) y[j] = hidden_act(is_relu, y[j] + x[j] + bias[j]);
}

// d = act'(y) * g and next = 0 (the GEMM adds d W_hh to it).
template <typename T>
void backward_row(int64_t H, bool is_relu, const T* __restrict y, const T* __restrict g, T* __restrict d,
                  T* __restrict next) {
  for (int64_t j = 0; j < H; ++j) {
    d[j] = hidden_grad(is_relu, y[j], g[j]);
    next[j] = T(0);
  }
}

template <typename T>
void forward_impl(const Spec& sp, const FwdArgs& a, const Tensor& hs) {
  const int64_t Tn = a.xp.size(0), B = a.xp.size(1), H = a.xp.size(2);
  const bool is_relu = sp.act == kRelu;
  const Mask mask(a.mask, B);
  const T* xp = a.xp.data_ptr<T>();
  const T* h0 = a.state0[0].data_ptr<T>();
  const T* w = a.rec[0]->data_ptr<T>();
  const Tensor zero_bias = a.rec[1].has_value() ? *a.rec[1] : at::zeros({H}, a.xp.options());
  const T* bias = zero_bias.data_ptr<T>();
  T* out = hs.data_ptr<T>();
  const StepWeight<T> w_t(Op::T, B, H, H, w, H);              // h W_hh^T
  for (int64_t t = 0; t < Tn; ++t) {
    const T* prev = t ? out + (t - 1) * B * H : h0;
    T* ht = out + t * B * H;                                  // (B, H)
    w_t.mul(prev, H, T(0), ht, H);
    for_rows(B, H, [&](int64_t b) {
      if (mask.valid(t, b))
        forward_row(H, is_relu, ht + b * H, xp + (t * B + b) * H, bias);
      else
        std::memcpy(ht + b * H, prev + b * H, H * sizeof(T));
    });
  }
}

template <typename T>
void backward_impl(const Spec& sp, const BwdArgs& a, Tensor& da, Tensor& dh, Tensor& dn) {
  const int64_t Tn = a.states[0].size(0), B = a.states[0].size(1), H = a.states[0].size(2);
  const bool is_relu = sp.act == kRelu;
  const Mask mask(a.mask, B);
  const T* hs = a.states[0].data_ptr<T>();
  const T* w = a.rec[0]->data_ptr<T>();
  const GradOut<T> dout(a.d_out);
  T* dA = da.data_ptr<T>();
  const StepWeight<T> w_n(Op::N, B, H, H, w, H);              // da W_hh
  for (int64_t t = Tn - 1; t >= 0; --t) {
    T* dat = dA + t * B * H;                                  // (B, H)
    T* g_in = dh.data_ptr<T>();
    T* g_out = dn.data_ptr<T>();
    for_rows(B, H, [&](int64_t b) {
      const int64_t r = (t * B + b) * H;
      T *d = dat + b * H, *next = g_out + b * H, *g = g_in + b * H;
      dout.add(t, b, H, g);
      if (mask.valid(t, b))
        backward_row(H, is_relu, hs + r, g, d, next);
      else
        skip_row(H, g, next, H, d);
    });
    w_n.mul(dat, H, T(1), g_out, H);                          // dh_{t-1} += da_t W_hh
    std::swap(dh, dn);
  }
}

}  // namespace

Tensors elman_buffers(const Spec&, int64_t T, int64_t B, int64_t H, int64_t, bool, const at::TensorOptions& opt) {
  return {empty_seq({T, B, H}, opt)};
}

void elman_run(const Spec& sp, const FwdArgs& a, const Tensors& bufs) {
  AT_DISPATCH_FLOATING_TYPES(a.xp.scalar_type(), "elman_forward", [&] { forward_impl<scalar_t>(sp, a, bufs[0]); });
}

FwdResult elman_forward(const Spec& sp, const FwdArgs& a) {
  const Tensors bufs = elman_buffers(sp, a.xp.size(0), a.xp.size(1), a.xp.size(2), 0, a.save, a.xp.options());
  elman_run(sp, a, bufs);
  return {bufs, {}};
}

BwdResult elman_backward(const Spec& sp, const BwdArgs& a) {
  const Tensor& hs = a.states[0];
  const int64_t Tn = hs.size(0), B = hs.size(1), H = hs.size(2);
  Tensor da = empty_seq(hs.sizes(), hs.options());
  Tensor dh = a.d_final[0].has_value() ? a.d_final[0]->clone() : at::zeros({B, H}, hs.options());
  Tensor dn = at::empty({B, H}, hs.options());
  Tensor dw = at::empty({H, H}, hs.options());
  c10::optional<Tensor> db;
  if (a.rec[1].has_value()) db = at::empty({H}, hs.options());
  AT_DISPATCH_FLOATING_TYPES(hs.scalar_type(), "elman_backward", [&] {
    backward_impl<scalar_t>(sp, a, da, dh, dn);
    weight_grad<scalar_t>(Tn, B, H, H, da.data_ptr<scalar_t>(), H, a.state0[0].data_ptr<scalar_t>(),
                          hs.data_ptr<scalar_t>(), dw.data_ptr<scalar_t>());
    if (db) col_sum<scalar_t>(Tn * B, H, da.data_ptr<scalar_t>(), H, db->data_ptr<scalar_t>());
  });
  return {da, {dh}, {dw, db}};
}

}  // namespace rnnkit
