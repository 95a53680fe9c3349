// The gate passes of one row of Elman, the LSTM and the GRU, shared by their sequence kernels
// (elman.cpp, lstm.cpp, gru.cpp) and the single differentiated step (cell_step.cpp).  Plain functions of restrict
// pointers: gcc vectorises them there, and does not vectorise the same loops inside the row
// lambdas that call them.  Tensors and rows: the headers of elman.cpp, lstm.cpp and gru.cpp.
#pragma once

#include "activations.h"

#include <cstdint>

namespace rnnkit {
namespace elman_rows {

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

}  // namespace elman_rows

namespace lstm_rows {

// Gate pass of one row (plain function of restrict pointers, so that gcc vectorises it):
// g holds h_{t-1} W_hh^T on entry and the activated gates on exit; peep: w_ch (3H) or zeros.
template <typename T>
void forward_row(int64_t H, T* __restrict g, const T* __restrict x, const T* __restrict bias,
                 const T* __restrict peep, const T* __restrict c_prev, T* __restrict c, T* __restrict tc,
                 T* __restrict h) {
  for (int64_t j = 0; j < H; ++j) {
    const T i = sigmoid(g[j] + x[j] + bias[j] + peep[j] * c_prev[j]);
    const T f = sigmoid(g[H + j] + x[H + j] + bias[H + j] + peep[H + j] * c_prev[j]);
    const T n = tanh_(g[2 * H + j] + x[2 * H + j] + bias[2 * H + j]);
    const T cn = f * c_prev[j] + i * n;
    const T o = sigmoid(g[3 * H + j] + x[3 * H + j] + bias[3 * H + j] + peep[2 * H + j] * cn);
    const T tcn = tanh_(cn);
    g[j] = i, g[H + j] = f, g[2 * H + j] = n, g[3 * H + j] = o;
    c[j] = cn, tc[j] = tcn, h[j] = o * tcn;
  }
}

// Gradient of one row: d (4H) from dh = gh and the carried dc (updated in place to dc_{t-1});
// peep: w_ch (3H) or zeros; zc: zoneout's z of c for the row (zc_p: its constant when zc is
// nullptr; 0 without zoneout): dc reaches the cell times (1 - z) and c_{t-1} directly times z.
// Ln: dcn (H) is the gradient reaching c_t through tanh_c (layer norm's LN'(dn g_c)), else it is
// dh o (1 - tanh_c^2), computed here.
template <typename T, bool Ln = false>
void backward_row(int64_t H, const T* __restrict g, const T* __restrict tc, const T* __restrict c_prev,
                  const T* __restrict peep, const T* __restrict zc, T zc_p, const T* __restrict gh,
                  T* __restrict gc, T* __restrict d, const T* __restrict dcn = nullptr) {
  for (int64_t j = 0; j < H; ++j) {
    const T i = g[j], f = g[H + j], n = g[2 * H + j], o = g[3 * H + j];
    const T z = zc != nullptr ? zc[j] : zc_p;
    const T dpo = gh[j] * tc[j] * o * (T(1) - o);
    const T dcell = Ln ? dcn[j] : gh[j] * o * (T(1) - tc[j] * tc[j]);
    const T dct = gc[j] * (T(1) - z) + dcell + dpo * peep[2 * H + j];
    const T di = dct * n * i * (T(1) - i), df = dct * c_prev[j] * f * (T(1) - f);
    d[j] = di, d[H + j] = df;
    d[2 * H + j] = dct * i * (T(1) - n * n);
    d[3 * H + j] = dpo;
    gc[j] = dct * f + di * peep[j] + df * peep[H + j] + gc[j] * z;   // the constant error carousel
  }
}

}  // namespace lstm_rows

namespace gru_rows {

// Gate passes of one row, plain functions of restrict pointers so that gcc vectorises them.
// Each pointer is the row of the header's tensor of the same name.

// Torch form: hw = h_{t-1} W_hh^T (3H).
template <typename T>
void after_row(int64_t H, const T* __restrict xp, const T* __restrict hw, const T* __restrict b_hh,
               const T* __restrict h_prev, T* __restrict gates, T* __restrict hn, T* __restrict h) {
  for (int64_t j = 0; j < H; ++j) {
    const T r = sigmoid(xp[j] + hw[j] + b_hh[j]);
    const T z = sigmoid(xp[H + j] + hw[H + j] + b_hh[H + j]);
    const T hn_j = hw[2 * H + j] + b_hh[2 * H + j];
    const T n = tanh_(xp[2 * H + j] + r * hn_j);
    gates[j] = r, gates[H + j] = z, gates[2 * H + j] = n, hn[j] = hn_j;
    h[j] = (T(1) - z) * n + z * h_prev[j];
  }
}

// Original form, first pass: r and z from hw = h_{t-1} W_hrz^T (2H), and rh = r * h_{t-1}.
template <typename T>
void before_row_rz(int64_t H, const T* __restrict xp, const T* __restrict hw, const T* __restrict b_hh,
                   const T* __restrict h_prev, T* __restrict gates, T* __restrict rh) {
  for (int64_t j = 0; j < H; ++j) {
    const T r = sigmoid(xp[j] + hw[j] + b_hh[j]);
    gates[j] = r, gates[H + j] = sigmoid(xp[H + j] + hw[H + j] + b_hh[H + j]);
    rh[j] = r * h_prev[j];
  }
}

// Original form, second pass: n from hwn = rh W_hn^T, and h_t.
template <typename T>
void before_row_n(int64_t H, const T* __restrict xp, const T* __restrict hwn, const T* __restrict b_hh,
                  const T* __restrict h_prev, T* __restrict gates, T* __restrict h) {
  for (int64_t j = 0; j < H; ++j) {
    const T n = tanh_(xp[2 * H + j] + hwn[j] + b_hh[2 * H + j]);
    const T z = gates[H + j];
    gates[2 * H + j] = n;
    h[j] = (T(1) - z) * n + z * h_prev[j];
  }
}

// Shared by both forms: dx of z and n (dan), and the direct path dh_prev = dh z.
template <typename T>
void zn_grads(int64_t H, const T* __restrict gates, const T* __restrict h_prev, const T* __restrict dh,
              T* __restrict dx, T* __restrict dh_prev) {
  for (int64_t j = 0; j < H; ++j) {
    const T z = gates[H + j], n = gates[2 * H + j];
    dx[2 * H + j] = dh[j] * (T(1) - z) * (T(1) - n * n);
    dx[H + j] = dh[j] * (h_prev[j] - n) * z * (T(1) - z);
    dh_prev[j] = dh[j] * z;
  }
}

// Torch form: dx of r through hn, and drn = dan * r.
template <typename T>
void after_r_grads(int64_t H, const T* __restrict gates, const T* __restrict hn, T* __restrict dx,
                   T* __restrict drn) {
  for (int64_t j = 0; j < H; ++j) {
    const T r = gates[j], dan = dx[2 * H + j];
    dx[j] = dan * hn[j] * r * (T(1) - r);
    drn[j] = dan * r;
  }
}

// Original form: dx of r and dh_prev through du = d(r * h_{t-1}).
template <typename T>
void before_r_grads(int64_t H, const T* __restrict gates, const T* __restrict h_prev, const T* __restrict du,
                    T* __restrict dx, T* __restrict dh_prev) {
  for (int64_t j = 0; j < H; ++j) {
    const T r = gates[j];
    dx[j] = du[j] * h_prev[j] * r * (T(1) - r);
    dh_prev[j] += du[j] * r;
  }
}

// Original form: rhs = r * h_{t-1}.
template <typename T>
void r_times_h(int64_t H, const T* __restrict gates, const T* __restrict h_prev, T* __restrict rhs) {
  for (int64_t j = 0; j < H; ++j) rhs[j] = gates[j] * h_prev[j];
}

}  // namespace gru_rows
}  // namespace rnnkit
