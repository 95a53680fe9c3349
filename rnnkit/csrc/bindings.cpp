// Python entry points of the fused CPU backend: one forward and one backward for every cell.
//
// spec = (kind, act, out, reset_after) as built by rnnkit/backends/cpu.py; the tensors follow
// the backend contract of rnnkit/backends/reference.py (shapes in rnn.h).  Inputs are made
// contiguous here, once, so the kernels can walk raw pointers.
#include <torch/extension.h>

#include "rnn.h"

namespace rnnkit {
namespace {

Spec make_spec(const std::vector<int64_t>& s) {
  TORCH_CHECK(s.size() == 4, "rnnkit: spec must have 4 entries, got ", s.size());
  return {s[0], s[1], s[2], s[3] != 0};
}

Tensor dense(const Tensor& t) { return t.defined() ? t.contiguous() : t; }

Tensors dense(const Tensors& ts) {
  Tensors out;
  out.reserve(ts.size());
  for (const auto& t : ts) out.push_back(t.contiguous());
  return out;
}

OptTensors dense(const OptTensors& ts) {
  OptTensors out;
  out.reserve(ts.size());
  for (const auto& t : ts)
    out.push_back(t.has_value() && t->defined() ? c10::optional<Tensor>(t->contiguous()) : c10::nullopt);
  return out;
}

// (T, B, 1) bool mask to a dense (T, B) one; undefined when there is none.
Tensor flat_mask(const c10::optional<Tensor>& mask) {
  if (!mask.has_value() || !mask->defined()) return Tensor();
  TORCH_CHECK(mask->scalar_type() == at::kBool, "rnnkit: mask must be bool");
  return mask->reshape({mask->size(0), mask->size(1)}).contiguous();
}

FwdResult run_forward(const Spec& sp, const FwdArgs& a) {
  switch (sp.kind) {
    case kElman: return elman_forward(sp, a);
    case kJordan: return jordan_forward(sp, a);
    case kLSTM: return lstm_forward(sp, a);
    case kGRU: return gru_forward(sp, a);
    default: TORCH_CHECK(false, "rnnkit: unknown cell kind ", sp.kind);
  }
}

std::tuple<Tensors, Tensors> forward(const std::vector<int64_t>& spec, const Tensor& xp,
                                     const c10::optional<Tensor>& mask, const Tensors& state0,
                                     const OptTensors& rec, bool save) {
  TORCH_CHECK(xp.dim() == 3 && xp.device().is_cpu(), "rnnkit: xp must be a (T, B, G*H) CPU tensor");
  FwdResult r = run_forward(make_spec(spec), {xp.contiguous(), flat_mask(mask), dense(state0), dense(rec), save});
  return {r.states, r.saved};
}

// x W_ih^T + b_ih for one step, straight to BLAS: an ATen addmm costs more than the GEMM here.
Tensor project(const Tensor& x, const Tensor& w_ih, const c10::optional<Tensor>& b_ih) {
  const int64_t B = x.size(0), I = x.size(1), GH = w_ih.size(0);
  Tensor xp = at::empty({B, GH}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "rnnkit_project", [&] {
    using T = scalar_t;
    T* out = xp.data_ptr<T>();
    const bool bias = b_ih.has_value() && b_ih->defined();
    const Tensor b_t = bias ? b_ih->contiguous() : Tensor();
    for (int64_t b = 0; bias && b < B; ++b) std::memcpy(out + b * GH, b_t.data_ptr<T>(), GH * sizeof(T));
    gemm(Op::N, Op::T, B, GH, I, x.data_ptr<T>(), I, w_ih.data_ptr<T>(), I, T(bias ? 1 : 0), out, GH);
  });
  return xp;
}

// Streaming inference: one step of a stack of L layers (one direction) in one call.
//   x (B, I); state0 (L, B, S_k) each; layers[l] = [w_ih, b_ih | None, rec params...]
//   returns the last layer's output (B, S_0) and the new states (L, B, S_k).
std::tuple<Tensor, Tensors> step(const std::vector<int64_t>& spec, const Tensor& x, const Tensors& state0,
                                 const std::vector<OptTensors>& layers) {
  const Spec sp = make_spec(spec);
  const int64_t L = static_cast<int64_t>(layers.size());
  std::vector<Tensors> finals(state0.size());
  Tensor inp = x;
  for (int64_t l = 0; l < L; ++l) {
    const OptTensors& p = layers[l];
    Tensor xp = project(inp.contiguous(), p[0]->contiguous(), p[1]);                     // (B, G*H)
    Tensors s0;
    for (const auto& s : state0) s0.push_back(L == 1 ? s[0].contiguous() : s.select(0, l).contiguous());
    FwdResult r = run_forward(sp, {xp.unsqueeze(0), Tensor(), s0, dense(OptTensors(p.begin() + 2, p.end())), false});
    for (size_t k = 0; k < r.states.size(); ++k) finals[k].push_back(r.states[k]);   // (1, B, S_k)
    inp = r.states[0][0];
  }
  Tensors h_n;
  for (auto& f : finals) h_n.push_back(L == 1 ? f[0] : at::cat(f));
  return {inp, h_n};
}

std::tuple<Tensor, Tensors, OptTensors> backward(
    const std::vector<int64_t>& spec, const c10::optional<Tensor>& d_out, const OptTensors& d_final,
    const c10::optional<Tensor>& mask, const Tensors& state0, const Tensors& states,
    const Tensors& saved, const OptTensors& rec) {
  const Spec sp = make_spec(spec);
  const BwdArgs a{d_out.has_value() ? *d_out : Tensor(), dense(d_final), flat_mask(mask),
                  dense(state0), dense(states), dense(saved), dense(rec)};
  BwdResult r;
  switch (sp.kind) {
    case kElman: r = elman_backward(sp, a); break;
    case kJordan: r = jordan_backward(sp, a); break;
    case kLSTM: r = lstm_backward(sp, a); break;
    case kGRU: r = gru_backward(sp, a); break;
    default: TORCH_CHECK(false, "rnnkit: unknown cell kind ", sp.kind);
  }
  return {r.d_xp, r.d_state0, r.d_rec};
}

}  // namespace
}  // namespace rnnkit

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "rnnkit fused CPU kernels: whole-sequence forward and backward per layer and direction";
  m.def("forward", &rnnkit::forward, "states, saved = forward(spec, xp, mask, state0, rec, save)");
  m.def("backward", &rnnkit::backward,
        "d_xp, d_state0, d_rec = backward(spec, d_out, d_final, mask, state0, states, saved, rec)");
  m.def("step", &rnnkit::step, "out, h_n = step(spec, x, state0, layers): one streaming step, no autograd");
  m.def("has_blas", &rnnkit::has_blas, "whether the time loops call BLAS directly");
}
