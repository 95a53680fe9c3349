// One differentiated step of a plain cell as one autograd node (shapes and contract: cell_step.h).
//
// The equations are rnnkit/cells' (elman.py, lstm.py, gru.py: forward and hand-derived backward in
// their docstrings), in two forms: ATen calls (strided inputs, and the backward recorded under
// create_graph: sigmoid_backward(g, y) = g y (1 - y) and tanh_backward(g, y) = g (1 - y^2) are
// single ATen ops with derivatives of their own, so it stays differentiable), and below those the
// first-order path on raw pointers.
#include "cell_step.h"

#include "gate_rows.h"
#include "gemm.h"
#include "loop.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/TensorOperators.h>
#include <ATen/core/grad_mode.h>
#include <ATen/ops/addcmul.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/sigmoid_backward.h>
#include <ATen/ops/tanh_backward.h>
#include <ATen/ops/threshold_backward.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>
#include <torch/csrc/autograd/custom_function.h>

#include <algorithm>
#include <vector>

namespace rnnkit {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

int64_t gates_of(int64_t kind) { return kind == kLSTM ? 4 : kind == kGRU ? 3 : 1; }

Tensor affine(const Tensor& a, const Tensor& w, const Tensor& b) {   // a w^T + b: (B, G*H)
  return b.defined() ? at::addmm(b, a, w.t()) : at::mm(a, w.t());
}

// forward's tensor arguments in their order (c, b_ih, b_hh may be undefined)
struct In {
  Tensor x, h, c, w_ih, w_hh, b_ih, b_hh;
};

// The step's outputs and the values its backward reads.
struct Values {
  Tensors out, keep;
};

// a x W_ih^T + b_ih + h W_hh^T + b_hh, one new tensor written in place (B, G*H): the in-place
// ops are as differentiable as the others when create_graph records them (none overwrites a value
// its own backward reads)
Tensor pre_activation(const In& a) {
  Tensor pre = affine(a.x, a.w_ih, a.b_ih).addmm_(a.h, a.w_hh.t());
  return a.b_hh.defined() ? pre.add_(a.b_hh) : pre;
}

Values lstm(const In& a) {
  const int64_t H = a.h.size(1);
  Tensor pre = pre_activation(a);                                         // (B, 4H)
  Tensor g = pre.narrow(1, 2 * H, H).tanh();
  Tensor sig = pre.sigmoid_();                                            // i, f, o read from here
  Tensor i = sig.narrow(1, 0, H), f = sig.narrow(1, H, H), o = sig.narrow(1, 3 * H, H);
  Tensor c2 = at::addcmul(f * a.c, i, g);                                 // (B, H)
  Tensor tc = c2.tanh();
  return {{o * tc, c2}, {i, f, g, o, tc}};
}

Values gru(const In& a) {
  const int64_t H = a.h.size(1);
  Tensor xp = affine(a.x, a.w_ih, a.b_ih), hp = affine(a.h, a.w_hh, a.b_hh);   // (B, 3H) each
  Tensor rz = xp.narrow(1, 0, 2 * H).add(hp.narrow(1, 0, 2 * H)).sigmoid_();
  Tensor r = rz.narrow(1, 0, H), z = rz.narrow(1, H, H), hn = hp.narrow(1, 2 * H, H);
  Tensor n = at::addcmul(xp.narrow(1, 2 * H, H), r, hn).tanh_();
  return {{at::addcmul(n, z, a.h - n)}, {r, z, n, hn}};                   // h' = (1 - z) n + z h
}

Values elman(int64_t kind, const In& a) {
  Tensor pre = pre_activation(a);                                         // (B, H)
  Tensor h2 = kind == kElmanTanh ? pre.tanh_() : pre.relu_();
  return {{h2}, {h2}};
}

Values run(int64_t kind, const In& a) {
  if (kind == kLSTM) return lstm(a);
  if (kind == kGRU) return gru(a);
  return elman(kind, a);
}

// Gradients of the pre-activations: d_xp reaches x W_ih^T + b_ih, d_hp h W_hh^T + b_hh (the same
// tensor but for the GRU's n block), d_h and d_c the state's direct terms (undefined: none).
struct PreGrads {
  Tensor d_xp, d_hp, d_h, d_c;
};

PreGrads lstm_back(const In& a, const Tensors& k, const Tensor& dh2, const Tensor& dc2) {
  const Tensor &i = k[0], &f = k[1], &g = k[2], &o = k[3], &tc = k[4];
  Tensor dcs = dh2.defined() ? at::tanh_backward(dh2 * o, tc) : dc2;      // dL/dc' through both paths
  if (dh2.defined() && dc2.defined()) dcs = dcs + dc2;
  Tensor d_o = dh2.defined() ? at::sigmoid_backward(dh2 * tc, o) : at::zeros_like(o);
  Tensor d = at::cat({at::sigmoid_backward(dcs * g, i), at::sigmoid_backward(dcs * a.c, f),
                      at::tanh_backward(dcs * i, g), d_o}, 1);             // (B, 4H)
  return {d, d, Tensor(), dcs * f};
}

PreGrads gru_back(const In& a, const Tensors& k, const Tensor& dh2) {
  const Tensor &r = k[0], &z = k[1], &n = k[2], &hn = k[3];
  Tensor dpn = at::tanh_backward(dh2 * (1 - z), n);                       // n's pre-activation
  Tensor dpr = at::sigmoid_backward(dpn * hn, r), dpz = at::sigmoid_backward(dh2 * (a.h - n), z);
  return {at::cat({dpr, dpz, dpn}, 1), at::cat({dpr, dpz, dpn * r}, 1), dh2 * z, Tensor()};
}

PreGrads elman_back(int64_t kind, const Tensors& k, const Tensor& dh2) {
  Tensor da = kind == kElmanTanh ? at::tanh_backward(dh2, k[0]) : at::threshold_backward(dh2, k[0], 0);
  return {da, da, Tensor(), Tensor()};
}

// -- the first-order path: BLAS and the sequence kernels' row passes on raw pointers ------------
// Function::forward always runs without grad mode, and backward does unless create_graph: there a
// step of contiguous float32/float64 CPU tensors runs as two GEMMs and the kernels' gate pass of
// each row (gate_rows.h, the passes a sequence kernel's step runs), not the 10-25 ATen calls above
// (each a dispatch and a new tensor: most of a step's forward at B = 1).  Its kept values have
// their own layout, read only by raw_back; a create_graph backward recomputes the ATen values.
//   Elman  keep {h'}               LSTM  keep {gates (B, 4H) = i f g o activated, tanh(c')}
//   GRU    keep {gates (B, 3H) = r z n activated, hn (B, H) = h W_hn^T + b_hn}

bool raw_ok(const In& a) {
  const auto dtype = a.x.scalar_type();
  if (!a.x.device().is_cpu() || (dtype != at::kFloat && dtype != at::kDouble)) return false;
  for (const Tensor* t : {&a.x, &a.h, &a.c, &a.w_ih, &a.w_hh, &a.b_ih, &a.b_hh})
    if (t->defined() && !t->is_contiguous()) return false;
  return true;
}

template <typename T>
const T* ptr(const Tensor& t) { return t.defined() ? t.data_ptr<T>() : nullptr; }

// At least n zeros, read only: the row operand of an absent bias, the LSTM's absent peepholes or
// an undefined gradient, from a buffer of the calling thread kept between calls (a new zero
// tensor cost a small step about 0.4 us each).  A call may move the buffer, so a function takes
// it once, at the largest size it needs; the row passes' worker threads only read it.
template <typename T>
const T* zeros_of(int64_t n) {
  thread_local std::vector<T> zeros;
  if (static_cast<int64_t>(zeros.size()) < n) zeros.assign(n, T(0));
  return zeros.data();
}

// t's values, or zeros where it is undefined
template <typename T>
const T* or_zeros_ptr(const Tensor& t, const T* zeros) { return t.defined() ? t.data_ptr<T>() : zeros; }

// (B, GH) = a W^T + bias (none where undefined): affine's raw form, a new tensor
template <typename T>
Tensor affine_raw(const Tensor& a, const Tensor& w, const Tensor& bias) {
  const int64_t B = a.size(0), K = a.size(1), GH = w.size(0);
  Tensor out = at::empty({B, GH}, a.options());
  project_into(ptr<T>(a), B, K, ptr<T>(w), ptr<T>(bias), GH, out.data_ptr<T>());
  return out;
}

// h' = act(h W_hh^T + xp + b_hh) by elman_rows::forward_row, xp = x W_ih^T + b_ih; keep {h'}.
template <typename T>
Values elman_raw(int64_t kind, const In& a) {
  const int64_t B = a.x.size(0), H = a.h.size(1);
  Tensor xp = affine_raw<T>(a.x, a.w_ih, a.b_ih), h2 = affine_raw<T>(a.h, a.w_hh, Tensor());   // (B, H)
  const T* bias = or_zeros_ptr<T>(a.b_hh, zeros_of<T>(H));
  for_rows(B, H, [&](int64_t b) {
    elman_rows::forward_row(H, kind == kElmanRelu, h2.data_ptr<T>() + b * H, ptr<T>(xp) + b * H, bias);
  });
  return {{h2}, {h2}};
}

// The gates as the sequence kernel's step makes them: gates = h W_hh^T, then lstm_rows::forward_row
// over xp = x W_ih^T + b_ih, b_hh and no peepholes; keep {gates activated, tanh(c')}.
template <typename T>
Values lstm_raw(const In& a) {
  const int64_t B = a.x.size(0), H = a.h.size(1);
  Tensor xp = affine_raw<T>(a.x, a.w_ih, a.b_ih), gates = affine_raw<T>(a.h, a.w_hh, Tensor());   // (B, 4H)
  const T *peep = zeros_of<T>(4 * H), *bias = or_zeros_ptr<T>(a.b_hh, peep);   // (4H zeros: both)
  Tensor h2 = at::empty({B, H}, a.x.options()), c2 = at::empty({B, H}, a.x.options()), tc = at::empty({B, H}, a.x.options());
  for_rows(B, 4 * H, [&](int64_t b) {
    lstm_rows::forward_row(H, gates.data_ptr<T>() + b * 4 * H, ptr<T>(xp) + b * 4 * H, bias, peep,
                           ptr<T>(a.c) + b * H, c2.data_ptr<T>() + b * H, tc.data_ptr<T>() + b * H,
                           h2.data_ptr<T>() + b * H);
  });
  return {{h2, c2}, {gates, tc}};
}

// gru_rows::after_row over xp = x W_ih^T + b_ih, hw = h W_hh^T and b_hh; keep {gates activated,
// hn = h W_hn^T + b_hn (B, H)}.
template <typename T>
Values gru_raw(const In& a) {
  const int64_t B = a.x.size(0), H = a.h.size(1);
  Tensor xp = affine_raw<T>(a.x, a.w_ih, a.b_ih), hw = affine_raw<T>(a.h, a.w_hh, Tensor());   // (B, 3H)
  const T* bias = or_zeros_ptr<T>(a.b_hh, zeros_of<T>(3 * H));
  Tensor gates = at::empty({B, 3 * H}, a.x.options()), hn = at::empty({B, H}, a.x.options()), h2 = at::empty({B, H}, a.x.options());
  for_rows(B, 3 * H, [&](int64_t b) {
    gru_rows::after_row(H, ptr<T>(xp) + b * 3 * H, ptr<T>(hw) + b * 3 * H, bias, ptr<T>(a.h) + b * H,
                        gates.data_ptr<T>() + b * 3 * H, hn.data_ptr<T>() + b * H, h2.data_ptr<T>() + b * H);
  });
  return {{h2}, {gates, hn}};
}

Values run_raw(int64_t kind, const In& a) {
  return AT_DISPATCH_FLOATING_TYPES(a.x.scalar_type(), "cell_step", [&] {
    return kind == kLSTM ? lstm_raw<scalar_t>(a) : kind == kGRU ? gru_raw<scalar_t>(a) : elman_raw<scalar_t>(kind, a);
  });
}

// The pre-activations' gradients from raw's kept values by the same row passes as the sequence
// kernels' backward; dh2, dc2 contiguous or undefined (zero).
template <typename T>
PreGrads raw_back(int64_t kind, const In& a, const Tensors& k, const Tensor& dh2, const Tensor& dc2) {
  const int64_t B = a.x.size(0), H = a.h.size(1), G = gates_of(kind);
  Tensor d = at::empty({B, G * H}, a.x.options());
  if (kind == kElmanTanh || kind == kElmanRelu) {
    Tensor unused = at::empty({B, H}, a.x.options());                      // the row pass's dh_prev (zeros)
    for_rows(B, H, [&](int64_t b) {
      elman_rows::backward_row(H, kind == kElmanRelu, ptr<T>(k[0]) + b * H, ptr<T>(dh2) + b * H,
                               d.data_ptr<T>() + b * H, unused.data_ptr<T>() + b * H);
    });
    return {d, d, Tensor(), Tensor()};
  }
  const T* zeros = zeros_of<T>(std::max<int64_t>(B, 3) * H);   // an undefined dh2's rows, no peepholes
  const T* dh = or_zeros_ptr<T>(dh2, zeros);
  if (kind == kLSTM) {
    // the carried dc enters as dc' (or zeros) and leaves as dc: the gradient of c
    Tensor d_c = dc2.defined() ? dc2.clone() : at::zeros({B, H}, a.x.options());
    for_rows(B, 4 * H, [&](int64_t b) {
      lstm_rows::backward_row<T>(H, ptr<T>(k[0]) + b * 4 * H, ptr<T>(k[1]) + b * H, ptr<T>(a.c) + b * H, zeros,
                                 nullptr, T(0), dh + b * H, d_c.data_ptr<T>() + b * H,
                                 d.data_ptr<T>() + b * 4 * H);
    });
    return {d, d, Tensor(), d_c};
  }
  // GRU: d_hp = [dx_r, dx_z, drn], the rows of the recurrent gradients
  Tensor d_hp = at::empty({B, 3 * H}, a.x.options()), d_h = at::empty({B, H}, a.x.options());
  for_rows(B, 3 * H, [&](int64_t b) {
    T* dx = d.data_ptr<T>() + b * 3 * H;
    T* dr = d_hp.data_ptr<T>() + b * 3 * H;
    gru_rows::zn_grads(H, ptr<T>(k[0]) + b * 3 * H, ptr<T>(a.h) + b * H, dh + b * H, dx,
                       d_h.data_ptr<T>() + b * H);
    gru_rows::after_r_grads(H, ptr<T>(k[0]) + b * 3 * H, ptr<T>(k[1]) + b * H, dx, dr + 2 * H);
    std::copy(dx, dx + 2 * H, dr);
  });
  return {d, d_hp, d_h, Tensor()};
}

// Function::apply records every tensor argument as an input, and an undefined one fails there;
// so only the defined ones go in, in In's order, and `present` says which of c, b_ih, b_hh are.
enum Present : int64_t { kC = 1, kBIh = 2, kBHh = 4 };

In unpack(int64_t present, const Tensors& t) {
  size_t k = 0;
  In a;
  a.x = t[k++];
  a.h = t[k++];
  if (present & kC) a.c = t[k++];
  a.w_ih = t[k++];
  a.w_hh = t[k++];
  if (present & kBIh) a.b_ih = t[k++];
  if (present & kBHh) a.b_hh = t[k++];
  return a;
}

// op(a) b as a new tensor, a (B, N) or (N, B) as `ta` says: BLAS on raw pointers on the
// first-order path (`raw`: contiguous float32/float64), else ATen's mm (recorded under create_graph)
Tensor product(bool raw, bool ta, const Tensor& a, const Tensor& b) {
  if (!raw) return (ta ? a.t() : a).mm(b);
  const int64_t M = a.size(ta ? 1 : 0), K = a.size(ta ? 0 : 1), N = b.size(1);
  Tensor out = at::empty({M, N}, a.options());
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "cell_step_product", [&] {
    gemm(ta ? Op::T : Op::N, Op::N, M, N, K, a.data_ptr<scalar_t>(), a.size(1), b.data_ptr<scalar_t>(), N,
         scalar_t(0), out.data_ptr<scalar_t>(), N);
  });
  return out;
}

// d's column sums (G*H): a bias's gradient
Tensor column_sums(bool raw, const Tensor& d) {
  if (!raw) return d.sum(0);
  const int64_t B = d.size(0), N = d.size(1);
  Tensor out = at::zeros({N}, d.options());
  AT_DISPATCH_FLOATING_TYPES(d.scalar_type(), "cell_step_sums", [&] {
    const scalar_t* p = d.data_ptr<scalar_t>();
    scalar_t* o = out.data_ptr<scalar_t>();
    for (int64_t b = 0; b < B; ++b)
      for (int64_t j = 0; j < N; ++j) o[j] += p[b * N + j];
  });
  return out;
}

// The inputs' gradients from the pre-activations', in `grads`' slots [kind, present, one per
// given input]; `raw` as product's.
variable_list input_grads(AutogradContext* ctx, const In& a, int64_t present, const PreGrads& p, bool raw,
                          variable_list grads) {
  size_t k = 0;                               // the next given input's index
  // the gradient slot of the next input, if it was given (present) and needs one
  auto slot = [&](bool given) -> Tensor* {
    if (!given) return nullptr;
    const size_t i = k++;
    return ctx->needs_input_grad(i) ? &grads[2 + i] : nullptr;
  };
  if (Tensor* g = slot(true)) *g = product(raw, false, p.d_xp, a.w_ih);                   // x (B, I)
  if (Tensor* g = slot(true)) {                                                          // h (B, H)
    *g = product(raw, false, p.d_hp, a.w_hh);
    if (p.d_h.defined()) *g = raw ? g->add_(p.d_h) : *g + p.d_h;
  }
  if (Tensor* g = slot(present & kC)) *g = p.d_c;
  if (Tensor* g = slot(true)) *g = product(raw, true, p.d_xp, a.x);                       // w_ih (G*H, I)
  if (Tensor* g = slot(true)) *g = product(raw, true, p.d_hp, a.h);                       // w_hh (G*H, H)
  Tensor db_ih;
  if (Tensor* g = slot(present & kBIh)) *g = db_ih = column_sums(raw, p.d_xp);           // b_ih (G*H)
  if (Tensor* g = slot(present & kBHh)) *g = db_ih.defined() && p.d_hp.is_same(p.d_xp) ? db_ih : column_sums(raw, p.d_hp);
  return grads;
}

struct CellStep : public torch::autograd::Function<CellStep> {
  static variable_list forward(AutogradContext* ctx, int64_t kind, int64_t present, at::TensorList inputs) {
    ctx->set_materialize_grads(false);        // an unused output's gradient stays undefined: no zeros made
    ctx->saved_data["kind"] = kind;
    ctx->saved_data["present"] = present;
    const In a = unpack(present, inputs.vec());
    const bool raw = raw_ok(a);
    ctx->saved_data["raw"] = raw;
    ctx->saved_data["inputs"] = static_cast<int64_t>(inputs.size());   // the saved list's inputs, then the kept values
    Values v = raw ? run_raw(kind, a) : run(kind, a);
    Tensors saved(inputs.begin(), inputs.end());
    saved.insert(saved.end(), v.keep.begin(), v.keep.end());
    ctx->save_for_backward(saved);
    return v.out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list d_out) {
    const int64_t kind = ctx->saved_data["kind"].toInt(), present = ctx->saved_data["present"].toInt();
    Tensors s = ctx->get_saved_variables();
    const bool graph = at::GradMode::is_enabled(), raw = ctx->saved_data["raw"].toBool();
    const size_t n = static_cast<size_t>(ctx->saved_data["inputs"].toInt());
    const In a = unpack(present, Tensors(s.begin(), s.begin() + n));
    Tensors keep(s.begin() + n, s.end());
    // create_graph: the kept values were made without a graph; made again from the saved inputs
    // with grad mode on, the gradients below record how they depend on those inputs.
    if (graph) keep = run(kind, a).keep;
    const Tensor& dh2 = d_out[0];
    const Tensor dc2 = kind == kLSTM ? d_out[1] : Tensor();
    variable_list grads(2 + n);               // kind, present, then one per input
    if (!dh2.defined() && !dc2.defined()) return grads;
    if (raw && !graph) {
      const Tensor dh = dh2.defined() ? dh2.contiguous() : dh2, dc = dc2.defined() ? dc2.contiguous() : dc2;
      const PreGrads p = AT_DISPATCH_FLOATING_TYPES(a.x.scalar_type(), "cell_step_backward",
                                                    [&] { return raw_back<scalar_t>(kind, a, keep, dh, dc); });
      return input_grads(ctx, a, present, p, true, std::move(grads));
    }
    const PreGrads p = kind == kLSTM  ? lstm_back(a, keep, dh2, dc2)
                       : kind == kGRU ? gru_back(a, keep, dh2)
                                      : elman_back(kind, keep, dh2);
    return input_grads(ctx, a, present, p, false, std::move(grads));
  }
};

void check_param(const char* name, const Tensor& t, std::initializer_list<int64_t> shape, const Tensor& x) {
  TORCH_CHECK_VALUE(t.sizes() == c10::IntArrayRef(shape), "cell_step: ", name, ": expected shape ",
                    c10::IntArrayRef(shape), ", got ", t.sizes());
  TORCH_CHECK_VALUE(t.scalar_type() == x.scalar_type() && t.device() == x.device(), "cell_step: ", name,
                    ": expected ", x.scalar_type(), " on ", x.device(), " as x, got ", t.scalar_type(), " on ",
                    t.device());
}

}  // namespace

Tensors cell_step(int64_t kind, const Tensor& x, const c10::optional<Tensor>& h, const c10::optional<Tensor>& c,
                  const Tensor& w_ih, const Tensor& w_hh, const c10::optional<Tensor>& b_ih,
                  const c10::optional<Tensor>& b_hh) {
  TORCH_CHECK_VALUE(kind >= kElmanTanh && kind <= kGRU, "cell_step: kind: expected 0-3, got ", kind);
  TORCH_CHECK_VALUE(x.dim() == 2 && x.is_floating_point(), "cell_step: x: expected a 2-D floating tensor (B, I), got ",
                    x.dim(), "-D ", x.scalar_type());
  TORCH_CHECK_VALUE(w_hh.dim() == 2, "cell_step: w_hh: expected (G*H, H), got ", w_hh.sizes());
  const int64_t B = x.size(0), I = x.size(1), H = w_hh.size(1), G = gates_of(kind);
  check_param("w_ih", w_ih, {G * H, I}, x);
  check_param("w_hh", w_hh, {G * H, H}, x);
  const Tensor bi = b_ih.has_value() ? *b_ih : Tensor(), bh = b_hh.has_value() ? *b_hh : Tensor();
  if (bi.defined()) check_param("b_ih", bi, {G * H}, x);
  if (bh.defined()) check_param("b_hh", bh, {G * H}, x);
  auto state = [&](const char* name, const c10::optional<Tensor>& t) {    // given (checked), else zeros
    if (!t.has_value() || !t->defined()) return at::zeros({B, H}, x.options());
    check_param(name, *t, {B, H}, x);
    return *t;
  };
  Tensors inputs{x, state("h", h)};
  const bool lstm = kind == kLSTM;
  TORCH_CHECK_VALUE(lstm || !c.has_value() || !c->defined(), "cell_step: c: expected None (only the LSTM has a cell state)");
  if (lstm) inputs.push_back(state("c", c));
  inputs.push_back(w_ih);
  inputs.push_back(w_hh);
  if (bi.defined()) inputs.push_back(bi);
  if (bh.defined()) inputs.push_back(bh);
  const int64_t present = (lstm ? kC : 0) | (bi.defined() ? kBIh : 0) | (bh.defined() ? kBHh : 0);
  return CellStep::apply(kind, present, at::TensorList(inputs));
}

}  // namespace rnnkit
