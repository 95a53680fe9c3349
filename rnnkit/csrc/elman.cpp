// Elman (simple RNN) over a whole sequence, forward and backward through time.
//
// Tensors (T steps, B batch, H hidden):
//   xp       (T, B, H)    x W_ih^T + b_ih                      input, read only
//   h0       (B, H)       initial state                        input, read only
//   w_hh     (H, H)       recurrent weights                    input, read only
//   b_hh     (H) | None
//   hs       (T, B, H)    h_t, the only thing saved for backward (plus h0)
//   h_update (T, B, H)    zoneout only: act(a_t), what the cell computed before zoneout: saved
//                         ("h_update"; rows of padded steps zero); not kept without save
//   noise    (T, B, H)    the recurrent mask m_t and/or zoneout's z_t (rnn.h), read only
//   hd       (B, H)       recurrent dropout, forward workspace: h_{t-1} * m_t, the GEMM's input
//   da       (T, B, H)    backward: d pre-activation = d_xp, returned; also the rows of the
//                         single post-loop GEMM dW_hh = da^T [h0; hs[:-1]] (recurrent dropout:
//                         dW_hh = da^T hd_all, hd_all (T, B, H) the masked previous states)
//   dh, dh_prev (B, H)    backward workspaces: carried dh and the next one (backward_steps, loop.h)
//   dhd      (B, H)       recurrent dropout, backward workspace: da_t W_hh, added to dh_prev * m_t
// Aliasing: each step's GEMM writes h_{t-1} W_hh^T straight into hs[t], which the gate pass
// then overwrites in place with h_t; nothing else aliases.
#include "activations.h"
#include "gemm.h"
#include "loop.h"
#include "rnn.h"

#include <ATen/Dispatch.h>

namespace rnnkit {
namespace {

// The gate passes are plain functions of restrict pointers: inside the row lambdas gcc does
// not vectorise them.
template <typename T>
void forward_row(int64_t H, bool is_relu, T* __restrict h, const T* __restrict xp, const T* __restrict b_hh) {
  for (int64_t j = 0; j < H; ++j) h[j] = hidden_act(is_relu, h[j] + xp[j] + b_hh[j]);
}

// da = act'(h) * dh and dh_prev = 0 (the GEMM adds da W_hh to it).
template <typename T>
void backward_row(int64_t H, bool is_relu, const T* __restrict h, const T* __restrict dh, T* __restrict da,
                  T* __restrict dh_prev) {
  for (int64_t j = 0; j < H; ++j) {
    da[j] = hidden_grad(is_relu, h[j], dh[j]);
    dh_prev[j] = T(0);
  }
}

template <typename T>
void forward_impl(const Spec& sp, const FwdArgs& a, const Tensor& hs_t, const Tensor& upd_t) {
  const int64_t Tn = a.xp.size(0), B = a.xp.size(1), H = a.xp.size(2);
  const bool is_relu = sp.act == kRelu;
  const Mask mask(a.mask, B);
  const Noise<T> nz(sp, a.noise);
  const Tensor bias = or_zeros(a.rec[1], H, a.xp.options());
  const Tensor hd_t = nz.drop ? at::empty({B, H}, a.xp.options()) : Tensor();
  const T *xp = a.xp.data_ptr<T>(), *h0 = a.state0[0].data_ptr<T>(), *b_hh = bias.data_ptr<T>();
  T *hs = hs_t.data_ptr<T>(), *upd = upd_t.defined() ? upd_t.data_ptr<T>() : nullptr;
  T* hd = nz.drop ? hd_t.data_ptr<T>() : nullptr;
  const StepWeight<T> w_t(Op::T, B, H, H, a.rec[0]->data_ptr<T>(), H);   // h W_hh^T
  for (int64_t t = 0; t < Tn; ++t) {
    const T* prev = t ? hs + (t - 1) * B * H : h0;
    T* ht = hs + t * B * H;                                   // (B, H)
    if (hd != nullptr)
      for (int64_t b = 0; b < B; ++b) mul_to(H, hd + b * H, prev + b * H, nz.mask(t, b, H));
    w_t.mul(hd != nullptr ? hd : prev, H, T(0), ht, H);
    for_rows(B, H, [&](int64_t b) {
      T* u = upd != nullptr ? upd + (t * B + b) * H : nullptr;
      if (mask.valid(t, b)) {
        forward_row(H, is_relu, ht + b * H, xp + (t * B + b) * H, b_hh);
        if (nz.zoneout()) zone_row(H, ht + b * H, prev + b * H, nz.z(t, 0, b, H), nz.p, u);
        return;
      }
      std::memcpy(ht + b * H, prev + b * H, H * sizeof(T));
      if (u != nullptr) std::fill_n(u, H, T(0));
    });
  }
}

// Returns dh_0.
template <typename T>
Tensor backward_impl(const Spec& sp, const BwdArgs& a, const Tensor& da_t) {
  const int64_t B = a.states[0].size(1), H = a.states[0].size(2);
  const bool is_relu = sp.act == kRelu;
  const StepOptions<T> opt(sp, a);
  const T* hs = (sp.zoneout > 0 ? a.saved[0] : a.states[0]).data_ptr<T>();   // act(a_t) before zoneout
  T* da = da_t.data_ptr<T>();
  const Tensor dhd_t = opt.noise.drop ? at::empty({B, H}, da_t.options()) : Tensor();
  const StepWeight<T> w_n(Op::N, B, H, H, a.rec[0]->data_ptr<T>(), H);   // da W_hh
  return backward_steps<T>(
      a, opt, H, {{da, H}},
      [&](int64_t t, int64_t b, const T* dh, T* dh_prev) {
        const int64_t r = (t * B + b) * H;
        backward_row(H, is_relu, hs + r, dh, da + r, dh_prev);
      },
      [&](int64_t t, T* dh_prev) {
        if (!opt.noise.drop) return w_n.mul(da + t * B * H, H, T(1), dh_prev, H);   // += da_t W_hh
        T* dhd = dhd_t.data_ptr<T>();
        w_n.mul(da + t * B * H, H, T(0), dhd, H);
        for (int64_t b = 0; b < B; ++b) add_masked(H, dh_prev + b * H, dhd + b * H, opt.noise.mask(t, b, H));
      });
}

// [hs, h_update (zoneout with save; else undefined)]
Tensors elman_buffers(const Spec& sp, int64_t T, int64_t B, int64_t H, const OptTensors&, bool save,
                      const at::TensorOptions& opt) {
  return {empty_seq({T, B, H}, opt), sp.zoneout > 0 && save ? empty_seq({T, B, H}, opt) : Tensor()};
}

void elman_run(const Spec& sp, const FwdArgs& a, const Tensors& bufs) {
  AT_DISPATCH_FLOATING_TYPES(a.xp.scalar_type(), "elman_forward",
                             [&] { forward_impl<scalar_t>(sp, a, bufs[0], bufs[1]); });
}

FwdResult elman_forward(const Spec& sp, const FwdArgs& a) {
  const Tensors bufs = elman_buffers(sp, a.xp.size(0), a.xp.size(1), a.xp.size(2), a.rec, a.save, a.xp.options());
  elman_run(sp, a, bufs);
  if (!a.save || !bufs[1].defined()) return {{bufs[0]}, {}};
  return {{bufs[0]}, {bufs[1]}};
}

BwdResult elman_backward(const Spec& sp, const BwdArgs& a) {
  const Tensor& hs = a.states[0];
  const int64_t Tn = hs.size(0), B = hs.size(1), H = hs.size(2);
  const Tensor da = empty_seq(hs.sizes(), hs.options());
  Tensor dh, dw = at::empty({H, H}, hs.options());
  c10::optional<Tensor> db;
  if (a.rec[1].has_value()) db = at::empty({H}, hs.options());
  AT_DISPATCH_FLOATING_TYPES(hs.scalar_type(), "elman_backward", [&] {
    using T = scalar_t;
    dh = backward_impl<T>(sp, a, da);
    const Noise<T> nz(sp, a.noise);
    const Tensor hd = nz.drop ? dropped_prev<T>(a.state0[0], hs, nz) : Tensor();
    const T* prev0 = nz.drop ? hd.data_ptr<T>() : a.state0[0].data_ptr<T>();
    const T* prevs = nz.drop ? hd.data_ptr<T>() + B * H : hs.data_ptr<T>();
    weight_grad<T>(Tn, B, H, H, da.data_ptr<T>(), H, prev0, prevs, dw.data_ptr<T>());
    if (db) col_sum<scalar_t>(Tn * B, H, da.data_ptr<scalar_t>(), H, db->data_ptr<scalar_t>());
  });
  return {da, {dh}, {dw, db}};
}

std::vector<Sym> elman_saved(const Spec& sp) { return zoneout_saved(sp, {}); }

std::vector<ParamDecl> elman_rec(const Spec&) { return {{"weight_hh", {kH, kH}, false}, {"bias_hh", {kH}, true}}; }

}  // namespace

RNNKIT_REGISTER_CELL(Cell{"elman", /*id=*/0, /*gates=*/1, /*n_states=*/1, elman_forward, elman_backward,
                          elman_buffers, elman_run, /*states=*/{kH}, elman_rec, elman_saved});

}  // namespace rnnkit
