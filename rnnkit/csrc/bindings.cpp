// Python entry points of the fused CPU backend: the cell table (cells, make_spec), one forward
// and one backward that run any cell, the functional streaming step and the Stepper of
// stream.h (rnnkit.Stream).
//
// spec: the int vector make_spec returns (registry.cpp); the tensors follow the backend contract
// of rnnkit/backends/base.py (shapes in rnn.h).  Every argument is checked first (check.h: count,
// dims, sizes, dtype, device; an error names the argument), then made contiguous, once, so the
// kernels can walk raw pointers.
//
// Only torch's pybind11 glue is included (Tensor and STL casters), not <torch/extension.h>, whose
// C++ frontend costs this file about 20 s of compile time and is not used.
#include <torch/csrc/utils/pybind.h>

#include <ATen/Dispatch.h>
#include <ATen/core/LegacyTypeDispatch.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>

#include <algorithm>
#include <cstring>

#include "cell_step.h"
#include "check.h"
#include "gemm.h"
#include "loop.h"
#include "noise.h"
#include "pool.h"
#include "rnn.h"
#include "stream.h"
#include "varlen.h"

namespace rnnkit {
namespace {

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

// (T, B, 1) bool mask (checked) to a dense (T, B) one; undefined when there is none.
Tensor flat_mask(const c10::optional<Tensor>& mask) {
  if (!mask.has_value() || !mask->defined()) return Tensor();
  return mask->reshape({mask->size(0), mask->size(1)}).contiguous();
}

using Names = c10::optional<std::vector<std::string>>;

// The noise tensors (checked) with each step's (B, N_k) slice dense; a step stride of 0 (the
// recurrent mask expanded over time) is kept rather than copied T times.
Tensors dense_noise(const Tensors& noise) {
  Tensors out;
  for (const Tensor& n : noise)
    out.push_back(n.size(0) > 0 && n[0].is_contiguous() ? n : n.contiguous());
  return out;
}

std::tuple<Tensors, Tensors> forward(const std::vector<int64_t>& spec, const Tensor& xp,
                                     const c10::optional<Tensor>& mask, const Tensors& state0,
                                     const OptTensors& rec, bool save, const Tensors& noise, const Names& names) {
  const Spec sp = decode_spec(spec);
  const Cell& cell = *sp.cell;
  Checker c("rnnkit.forward", sp);
  c.tensor({"xp"}, xp, {kT, kB, kGH});
  c.tensors("state0", state0, {kB}, c.states());
  c.rec(rec, -1, names.value_or(std::vector<std::string>{}));
  c.mask(mask);
  c.noise(noise);
  const FwdResult r =
      cell.forward(sp, {xp.contiguous(), flat_mask(mask), dense(state0), dense(rec), save, dense_noise(noise)});
  return {r.states, r.saved};
}

// The layers and initial states of a stack (step, infer), after its input: L layers of [w_ih,
// b_ih | None, rec params...], state0 (L, B, S_k) each.
// zeros: state0 may be empty, meaning zeros (infer).
void check_stack(Checker& c, const char* who, const std::vector<OptTensors>& layers, const Tensors& state0,
                 bool zeros = false, int64_t directions = 1) {
  TORCH_CHECK(!layers.empty(), who, ": layers: expected at least one layer, got none");
  TORCH_CHECK(layers.size() % directions == 0, who, ": layers: expected one entry per layer and direction (",
              directions, " directions), got ", layers.size());
  c.fix(kL, static_cast<int64_t>(layers.size()), {"layers"});
  for (size_t l = 0; l < layers.size(); ++l) c.layer(layers[l], static_cast<int64_t>(l), directions);
  if (!(zeros && state0.empty())) c.tensors("state0", state0, {kL, kB}, c.states());
}

// stack[l] = part, stack (L, B, S) and part (B, S) with S = stack's, both dense: a layer's
// final states into a stack's h_n (part: its last step, (T, B, S)'s slice T-1) or its d_state0.
template <typename T>
void put_layer(const Tensor& stack, int64_t l, const Tensor& part, int64_t offset = 0) {
  TORCH_INTERNAL_ASSERT(stack.is_contiguous() && part.is_contiguous());
  const int64_t n = stack.size(1) * stack.size(2);
  std::memcpy(stack.data_ptr<T>() + l * n, part.data_ptr<T>() + offset * n, n * sizeof(T));
}

// xp (rows, GH) = inp (rows, I) W_ih^T + b_ih, with p a layer's [w_ih, b_ih | None, ...].
template <typename T>
void project_layer(const OptTensors& p, const T* inp, int64_t rows, int64_t GH, T* xp) {
  const Tensor w = p[0]->contiguous();
  const bool bias = p[1].has_value() && p[1]->defined();
  const Tensor b = bias ? p[1]->contiguous() : Tensor();
  project_into<T>(inp, rows, w.size(1), w.data_ptr<T>(), bias ? b.data_ptr<T>() : nullptr, GH, xp);
}

// Streaming inference, functional: one step of a stack of L layers (one direction) in one call,
// into new state tensors (the inputs are left as they are).
//   x (B, I); state0 (L, B, S_k) each; layers[l] = [w_ih, b_ih | None, rec params...]
//   returns the last layer's output (B, S_0), a copy of h_n[0][L-1], and h_n (L, B, S_k).
// h_n are the state slots of <cell>_buffers(T = L, save = false), whose workspaces (B, .) serve
// every layer; layer l writes slice l of h_n and reads slice l-1 as its input; xp (1, B, GH) is
// the projection workspace shared by the layers.
//
// step_states computes h_n below autograd's dispatch keys (the step records no graph, and its
// temporary views need no autograd view tracking; through the autograd kernels each view and
// empty tensor cost about a microsecond, most of a small step); step makes the returned view
// above them, as a view of h_n for autograd too.
Tensors step_states(const std::vector<int64_t>& spec, const Tensor& x, const Tensors& state0,
                    const std::vector<OptTensors>& layers) {
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  const Spec sp = decode_spec(spec);
  const Cell& cell = *sp.cell;
  Checker c("rnnkit.step", sp);
  c.tensor({"x"}, x, {kB, kI});
  check_stack(c, "rnnkit.step", layers, state0);
  const int64_t L = c.size(kL), B = c.size(kB), GH = cell.gates * c.size(kH);
  const Tensor xc = x.contiguous();
  const Tensors s0 = dense(state0);
  const OptTensors rec0 = dense(OptTensors(layers[0].begin() + 2, layers[0].end()));
  const Tensors bufs = cell.buffers(sp, L, B, GH / cell.gates, rec0, false, x.options());
  const Tensor xp = at::empty({1, B, GH}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "rnnkit_step", [&] {
    using T = scalar_t;
    for (int64_t l = 0; l < L; ++l) {
      const OptTensors& p = layers[l];
      const T* inp = l == 0 ? xc.data_ptr<T>() : bufs[0].data_ptr<T>() + (l - 1) * B * bufs[0].size(2);
      project_layer<T>(p, inp, B, GH, xp.data_ptr<T>());
      Tensors in, out = bufs;
      for (size_t k = 0; k < s0.size(); ++k) {
        in.push_back(s0[k].select(0, l));
        if (L > 1) out[k] = bufs[k].narrow(0, l, 1);
      }
      cell.run(sp, {xp, Tensor(), in, dense(OptTensors(p.begin() + 2, p.end())), false}, out);
    }
  });
  return Tensors(bufs.begin(), bufs.begin() + static_cast<int64_t>(s0.size()));
}

std::tuple<Tensor, Tensors> step(const std::vector<int64_t>& spec, const Tensor& x, const Tensors& state0,
                                 const std::vector<OptTensors>& layers) {
  Tensors h_n = step_states(spec, x, state0, layers);
  // the output is a copy of the last layer's state, not a view: editing it in place must leave
  // the returned state alone (as torch.nn's separate output and h_n); made below autograd, where
  // a new tensor costs a fraction of a microsecond
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  const Tensor last = h_n[0].select(0, static_cast<int64_t>(layers.size()) - 1);   // contiguous (B, S_0)
  Tensor out = at::empty(last.sizes(), last.options());
  std::memcpy(out.data_ptr(), last.data_ptr(), last.nbytes());
  return {out, h_n};
}

// The backward direction of a layer reads its sequence from the end: each run row i's first
// len[i] steps of xp (T, B, GH) reversed in place (the padded steps after them stay unread).
template <typename T>
void reverse_valid_steps(T* xp, const RunOrder& run, int64_t Tn, int64_t B, int64_t GH) {
  at::parallel_for(0, B, std::max<int64_t>(1, (int64_t(1) << 15) / std::max<int64_t>(Tn * GH, 1)),
                   [&](int64_t i0, int64_t i1) {
                     for (int64_t i = i0; i < i1; ++i) {
                       const int64_t n = run.len[i];
                       for (int64_t t = 0; t < n / 2; ++t)
                         std::swap_ranges(xp + (t * B + i) * GH, xp + (t * B + i + 1) * GH,
                                          xp + ((n - 1 - t) * B + i) * GH);
                     }
                   });
}

// A direction's states (T, B, S) into its half d of a bidirectional layer's output (T, B, 2S):
// the forward one as it is, the backward one (which ran on reversed rows) back in time order
// within each row's valid steps, zeros on its padded steps.
template <typename T>
void put_direction(T* out, const T* states, int64_t d, const RunOrder& run, int64_t Tn, int64_t B, int64_t S) {
  at::parallel_for(0, Tn, std::max<int64_t>(1, (int64_t(1) << 15) / std::max<int64_t>(B * S, 1)),
                   [&](int64_t t0, int64_t t1) {
                     for (int64_t t = t0; t < t1; ++t)
                       for (int64_t i = 0; i < B; ++i) {
                         T* to = out + (t * B + i) * 2 * S + d * S;
                         const int64_t n = run.len[i];
                         if (d == 1 && t >= n)
                           std::fill(to, to + S, T(0));
                         else
                           std::memcpy(to, states + ((d == 0 ? t : n - 1 - t) * B + i) * S, S * sizeof(T));
                       }
                   });
}

// Inference over a whole sequence in one call: a stack of L layers, one direction or both, no
// noise, nothing saved (what a layer's forward does without autograd, less its Python per layer
// and direction).
//   x (T, B, I); D = 2 with bidirectional, else 1; state0 (D*L, B, S_k) each, or none for zeros;
//   layers[l*D + d] = [w_ih, b_ih | None, rec params...] of layer l, direction d; lengths: none,
//   or (B,) int64 valid steps of the user's rows, each in [1, T];
//   returns out (T, B, D*S_0), the last layer's states (zeros on padded steps; both directions:
//   [forward, backward]), and h_n (D*L, B, S_k) (each row's state after its last valid step; the
//   backward direction's after its first step), new tensors in the user's row order.
//   batch_sizes (T,): x is instead a PackedSequence's data (N, I) with these batch sizes (no
//   lengths), and out its output's data (N, D*S_0); h_n in its rows' (sorted) order.
// xp (T, B, GH) is the projection workspace of every layer and direction in turn (the weights'
// sizes checked equal across layers by the Checker); layer l reads layer l-1's states[0] (both
// directions': their (T, B, 2 S_0) output).  The backward direction projects the same input and
// reverses each row's valid steps before its run (reverse_valid_steps); its states go back into
// time order in the output (put_direction).  With lengths the rows run longest first (RunOrder);
// a layer whose sequences' mean valid steps x I x GH reach row_macs (> 0) projects one sequence
// at a time over its valid steps only (project_rows_into; the first layer then reads x's rows
// where they are, with no copy into the run's order).
// Below autograd's dispatch keys, as step_states: the results are new tensors (the last
// layer's states, h_n), and the views made on the way are of tensors the caller never sees.
std::tuple<Tensor, Tensors> infer(const std::vector<int64_t>& spec, const Tensor& x, const Tensors& state0,
                                  const std::vector<OptTensors>& layers, const c10::optional<Tensor>& lengths,
                                  int64_t row_macs, const c10::optional<Tensor>& batch_sizes, bool bidirectional) {
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  const Spec sp = decode_spec(spec);
  const Cell& cell = *sp.cell;
  Checker c("rnnkit.infer", sp);
  const bool packed = batch_sizes.has_value() && batch_sizes->defined();
  c10::optional<RunOrder> from_packed;
  if (packed) {
    TORCH_CHECK_VALUE(!lengths.has_value() || !lengths->defined(),
                      "rnnkit.infer: lengths: expected None with batch_sizes (a PackedSequence carries its own)");
    from_packed = RunOrder::packed(*batch_sizes, "rnnkit.infer");
    TORCH_CHECK_VALUE(x.dim() == 2 && x.size(0) == from_packed->valid_steps() && x.device().is_cpu(),
                      "rnnkit.infer: x: expected a PackedSequence's CPU data (", from_packed->valid_steps(), ", I) for these batch_sizes, got shape ",
                      x.sizes(), " on ", x.device());
  }
  const Tensor xs = packed ? from_packed->unpack(x) : x;              // (T, B, I), the run's rows
  c.tensor({"x"}, xs, {kT, kB, kI});
  const int64_t D = bidirectional ? 2 : 1;
  check_stack(c, "rnnkit.infer", layers, state0, true, D);
  const int64_t Tn = c.size(kT), L = c.size(kL), B = c.size(kB), GH = cell.gates * c.size(kH);
  const int64_t S0 = c.size(c.states()[0]);
  TORCH_CHECK_VALUE(Tn > 0, "rnnkit.infer: x: expected at least one time step, got shape ", x.sizes());
  const bool varlen = lengths.has_value() && lengths->defined();
  TORCH_CHECK_VALUE(!varlen || (lengths->dim() == 1 && lengths->size(0) == B), "rnnkit.infer: lengths: expected (",
                    B, ",) (one per row of x), got shape ", lengths->sizes());
  const RunOrder run = packed ? *from_packed : varlen ? RunOrder(*lengths, Tn) : RunOrder(B, Tn);
  const Tensor mask = run.full ? Tensor() : run.mask(Tn);
  const RunOrder in_run(B, Tn);                                       // its order: rows already in run order
  const double mean_steps = B > 0 ? double(run.valid_steps()) / double(B) : 0.0;
  const auto by_rows = [&](int64_t I) { return !run.full && row_macs > 0 && mean_steps * I * GH >= row_macs; };
  Tensors s0 = dense(state0);
  if (state0.empty())
    for (const Sym k : c.states()) s0.push_back(at::zeros({L, B, c.size(k)}, xs.options()));
  else if (!run.sorted)
    for (Tensor& s : s0) s = run.gather(s);
  Tensors h_n;
  for (const Tensor& s : s0) h_n.push_back(at::empty_like(s));
  const Tensor xp = empty_seq({Tn, B, GH}, xs.options());
  Tensor xt = xs.stride(2) == 1 ? xs : xs.contiguous();                 // rows read in place by project_rows_into
  Tensor inp = by_rows(xs.size(2)) ? xt : (run.sorted ? xs.contiguous() : run.gather(xt));
  AT_DISPATCH_FLOATING_TYPES(xs.scalar_type(), "rnnkit_infer", [&] {
    using T = scalar_t;
    for (int64_t l = 0; l < L / D; ++l) {
      Tensor next = D == 2 ? empty_seq({Tn, B, 2 * S0}, xs.options()) : Tensor();   // the layer's output
      for (int64_t d = 0; d < D; ++d) {
        const int64_t k = l * D + d;
        const OptTensors& p = layers[k];
        if (by_rows(p[0]->size(1))) {
          Tensor into = xp;
          project_rows_into(inp, l == 0 ? run.order.data() : in_run.order.data(), run.len.data(), p[0]->contiguous(),
                            p[1].has_value() && p[1]->defined() ? c10::optional<Tensor>(p[1]->contiguous())
                                                                : c10::nullopt, into);
        } else {
          project_layer<T>(p, inp.data_ptr<T>(), Tn * B, GH, xp.data_ptr<T>());
        }
        if (d == 1) reverse_valid_steps<T>(xp.data_ptr<T>(), run, Tn, B, GH);
        Tensors in;
        for (const Tensor& s : s0) in.push_back(s.select(0, k));
        const FwdResult r = cell.forward(sp, {xp, mask, in, dense(OptTensors(p.begin() + 2, p.end())), false});
        for (size_t j = 0; j < h_n.size(); ++j) put_layer<T>(h_n[j], k, r.states[j], Tn - 1);
        if (D == 1)
          next = r.states[0];
        else
          put_direction<T>(next.data_ptr<T>(), r.states[0].data_ptr<T>(), d, run, Tn, B, S0);
      }
      inp = next;
    }
  });
  if (packed) return {run.pack(inp), h_n};
  if (run.sorted && run.full) return {inp, h_n};
  for (Tensor& h : h_n) h = run.to_user(h, false);
  return {run.to_user(inp, true), h_n};
}

// Training of a stack of L layers (one direction, no noise, no lengths) in one call each way: what
// the layers' training path computes layer by layer, without its Python and autograd nodes per
// layer (most of a short call's time).  The caller (rnnkit.backends.cpu) makes it one autograd node.
//   train_forward(spec, x, state0, layers) -> (out, h_n, keep)
//     x (T, B, I); state0 (L, B, S_k) each; layers[l] = [w_ih, b_ih | None, rec params...];
//     out (T, B, S_0): the last layer's states[0]; h_n (L, B, S_k) new tensors; keep: per layer
//     its states (T, B, S_k) and the cell's saved tensors (T, B, .), what train_backward reads.
//   train_backward(spec, d_out | None, d_h_n, x, state0, layers, keep, need_x, need_state0 = true)
//     d_h_n: per state (L, B, S_k) or None (no gradient reached it)
//     -> (dx (T, B, I) | None (need_x false), d_state0 (L, B, S_k) each (incomplete, not to be
//         read, with need_state0 false: step 0's recurrent products may be left out),
//         d_layers[l] = [dw_ih, db_ih | None, d_rec...])
//     per layer from the last: the cell's BPTT gives d_xp (T, B, GH); then dW_ih = d_xp^T in,
//     db_ih = d_xp's column sums, and d_in = d_xp W_ih, the d_out of the layer below (dx for
//     the first).  in: x, or the layer below's states[0].
// Below autograd's dispatch keys, as infer.
// The spec, the cell and the checks of a training entry point: x (T, B, I), the layers and
// state0 (L, B, S_k) each; the sizes they fix.
struct StackCall {
  const Spec sp;
  const Cell& cell;
  Checker c;
  int64_t T, L, B, GH;
  StackCall(const char* who, const std::vector<int64_t>& spec, const Tensor& x, const Tensors& state0,
            const std::vector<OptTensors>& layers)
      : sp(decode_spec(spec)), cell(*sp.cell), c(who, sp) {
    c.tensor({"x"}, x, {kT, kB, kI});
    check_stack(c, who, layers, state0);
    T = c.size(kT), L = c.size(kL), B = c.size(kB), GH = cell.gates * c.size(kH);
  }
};

std::tuple<Tensor, Tensors, Tensors> train_forward(const std::vector<int64_t>& spec, const Tensor& x,
                                                   const Tensors& state0, const std::vector<OptTensors>& layers) {
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  StackCall call("rnnkit.train_forward", spec, x, state0, layers);
  const Spec& sp = call.sp;
  const Cell& cell = call.cell;
  const int64_t Tn = call.T, L = call.L, B = call.B, GH = call.GH;
  TORCH_CHECK_VALUE(Tn > 0, "rnnkit.train_forward: x: expected at least one time step, got shape ", x.sizes());
  const Tensors s0 = dense(state0);
  Tensors h_n, keep;
  for (const Tensor& s : s0) h_n.push_back(at::empty_like(s));
  Tensor inp = x.contiguous();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "rnnkit_train_forward", [&] {
    using T = scalar_t;
    for (int64_t l = 0; l < L; ++l) {
      const OptTensors& p = layers[l];
      const Tensor xp = empty_temp({Tn, B, GH}, x.options());           // read by the forward only
      project_layer<T>(p, inp.data_ptr<T>(), Tn * B, GH, xp.data_ptr<T>());
      Tensors in;
      for (const Tensor& s : s0) in.push_back(s.select(0, l));
      const FwdResult r = cell.forward(sp, {xp, Tensor(), in, dense(OptTensors(p.begin() + 2, p.end())), true});
      for (size_t k = 0; k < h_n.size(); ++k) put_layer<T>(h_n[k], l, r.states[k], Tn - 1);
      keep.insert(keep.end(), r.states.begin(), r.states.end());
      keep.insert(keep.end(), r.saved.begin(), r.saved.end());
      inp = r.states[0];
    }
  });
  return {inp, h_n, keep};
}

std::tuple<c10::optional<Tensor>, Tensors, std::vector<OptTensors>> train_backward(
    const std::vector<int64_t>& spec, const c10::optional<Tensor>& d_out, const OptTensors& d_h_n, const Tensor& x,
    const Tensors& state0, const std::vector<OptTensors>& layers, const Tensors& keep, bool need_x,
    bool need_state0) {
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  StackCall call("rnnkit.train_backward", spec, x, state0, layers);
  const Spec& sp = call.sp;
  const Cell& cell = call.cell;
  Checker& c = call.c;
  const int64_t Tn = call.T, L = call.L, B = call.B, GH = call.GH;
  const size_t ns = c.states().size(), nsaved = cell.saved(sp).size(), per = ns + nsaved;
  c.count("keep", keep.size(), static_cast<size_t>(L) * per);
  c.count("d_h_n", d_h_n.size(), ns);
  for (int64_t l = 0; l < L; ++l) {
    const Tensors states(keep.begin() + l * per, keep.begin() + l * per + ns);
    c.tensors("keep", states, {kT, kB}, c.states());
    c.tensors("keep", Tensors(keep.begin() + l * per + ns, keep.begin() + (l + 1) * per), {kT, kB}, cell.saved(sp));
  }
  c.optionals("d_h_n", d_h_n, {kL, kB}, c.states());
  c.optional({"d_out"}, d_out, {kT, kB, c.states()[0]}, true);
  const Tensors s0 = dense(state0);
  Tensors d_state0;
  for (const Tensor& s : s0) d_state0.push_back(at::empty_like(s));
  std::vector<OptTensors> d_layers(L);
  Tensor d_in = d_out.has_value() ? *d_out : Tensor();                   // any strides: read in place
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "rnnkit_train_backward", [&] {
    using T = scalar_t;
    for (int64_t l = L - 1; l >= 0; --l) {
      const OptTensors& p = layers[l];
      const Tensor w_ih = p[0]->contiguous();
      const int64_t I = w_ih.size(1), rows = Tn * B;
      OptTensors d_final;
      for (size_t k = 0; k < ns; ++k)
        d_final.push_back(d_h_n[k].has_value() && d_h_n[k]->defined() ? c10::optional<Tensor>(d_h_n[k]->select(0, l).contiguous())
                                                                      : c10::nullopt);
      Tensors in;
      for (const Tensor& s : s0) in.push_back(s.select(0, l));
      const Tensors states(keep.begin() + l * per, keep.begin() + l * per + ns);
      const Tensors saved(keep.begin() + l * per + ns, keep.begin() + (l + 1) * per);
      BwdArgs args{d_in, d_final, Tensor(), in, dense(states), dense(saved), dense(OptTensors(p.begin() + 2, p.end()))};
      args.need_state0 = need_state0;
      const BwdResult r = cell.backward(sp, args);
      const Tensor d_xp = r.d_xp.contiguous();                         // (T, B, GH)
      const Tensor below = l > 0 ? keep[(l - 1) * per].contiguous() : x.contiguous();   // the layer's input
      Tensor dw_ih = at::empty({GH, I}, x.options());
      gemm(Op::T, Op::N, GH, I, rows, d_xp.data_ptr<T>(), GH, below.data_ptr<T>(), I, T(0), dw_ih.data_ptr<T>(), I);
      const bool bias = p[1].has_value() && p[1]->defined();
      OptTensors d{dw_ih, bias ? c10::optional<Tensor>(d_xp.view({rows, GH}).sum(0)) : c10::nullopt};
      d.insert(d.end(), r.d_rec.begin(), r.d_rec.end());
      d_layers[l] = std::move(d);
      for (size_t k = 0; k < ns; ++k) put_layer<T>(d_state0[k], l, r.d_state0[k].contiguous());
      d_in = Tensor();
      if (l > 0 || need_x) {                                           // d_in (T, B, I) = d_xp W_ih
        d_in = at::empty({Tn, B, I}, x.options());
        gemm(Op::N, Op::N, rows, I, GH, d_xp.data_ptr<T>(), GH, w_ih.data_ptr<T>(), I, T(0), d_in.data_ptr<T>(), I);
      }
    }
  });
  return {need_x ? c10::optional<Tensor>(d_in) : c10::nullopt, d_state0, d_layers};
}

std::tuple<Tensor, Tensors, OptTensors> backward(
    const std::vector<int64_t>& spec, const c10::optional<Tensor>& d_out, const OptTensors& d_final,
    const c10::optional<Tensor>& mask, const Tensors& state0, const Tensors& states,
    const Tensors& saved, const OptTensors& rec, const Tensors& noise, const Names& names) {
  const Spec sp = decode_spec(spec);
  const Cell& cell = *sp.cell;
  Checker c("rnnkit.backward", sp);
  c.tensors("states", states, {kT, kB}, c.states());
  c.tensors("state0", state0, {kB}, c.states());
  c.tensors("saved", saved, {kT, kB}, cell.saved(sp));
  c.rec(rec, -1, names.value_or(std::vector<std::string>{}));
  c.optional({"d_out"}, d_out, {kT, kB, c.states()[0]}, true);
  c.optionals("d_final", d_final, {kB}, c.states());
  c.mask(mask);
  c.noise(noise);
  const Tensor d = d_out.has_value() ? *d_out : Tensor();      // any strides: read in place (GradOut)
  const BwdResult r = cell.backward(sp, {d, dense(d_final), flat_mask(mask), dense(state0), dense(states),
                                         dense(saved), dense(rec), dense_noise(noise)});
  return {r.d_xp, r.d_state0, r.d_rec};
}

}  // namespace
}  // namespace rnnkit

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  rnnkit::check_cells();                                      // a bad table fails the import
  m.doc() = "rnnkit fused CPU kernels: whole-sequence forward and backward per layer and direction";
  m.def("cells", &rnnkit::cell_names, "the registered cells' names, in id order");
  m.def("make_spec", &rnnkit::make_spec, pybind11::arg("name"),
        pybind11::arg("options") = std::map<std::string, std::string>{},
        "spec = make_spec(name, options): the spec that forward, backward, step and Stepper take for the cell "
        "named name; options (str -> str): nonlinearity (tanh | relu), output_activation (identity | tanh | "
        "sigmoid | softmax), reset_after (1 | 0), peephole (0 | 1; lstm), recurrent_dropout and zoneout "
        "(a number in [0, 1); zoneout not on jordan), clip_recurrent (a positive finite number); absent ones "
        "their default; ValueError on an unknown name, option or value, or an option the cell does not take");
  using pybind11::arg;
  m.def("forward", &rnnkit::forward, arg("spec"), arg("xp"), arg("mask"), arg("state0"), arg("rec"), arg("save"),
        arg("noise") = rnnkit::Tensors{}, arg("names") = pybind11::none(),
        "states, saved = forward(spec, xp, mask, state0, rec, save, noise=[], names=None); noise: the cell's "
        "noise tensors (T, B, N_k), [] = eval; names: the rec params' names for messages (default the cell's)");
  m.def("backward", &rnnkit::backward, arg("spec"), arg("d_out"), arg("d_final"), arg("mask"), arg("state0"),
        arg("states"), arg("saved"), arg("rec"), arg("noise") = rnnkit::Tensors{}, arg("names") = pybind11::none(),
        "d_xp, d_state0, d_rec = backward(spec, d_out, d_final, mask, state0, states, saved, rec, noise=[], "
        "names=None)");
  m.def("infer", &rnnkit::infer, arg("spec"), arg("x"), arg("state0"), arg("layers"), arg("lengths") = pybind11::none(),
        arg("row_macs") = 0, arg("batch_sizes") = pybind11::none(), arg("bidirectional") = false,
        "out, h_n = infer(spec, x, state0, layers, lengths=None, row_macs=0, batch_sizes=None, bidirectional=False): "
        "a stack's forward, no autograd; with lengths (B,) the rows run longest first, padded steps are zero in out "
        "and h_n is each row's last valid state; row_macs > 0: a layer projects one sequence at a time where mean "
        "valid steps x I x GH reach it; with batch_sizes x and out are a PackedSequence's data; bidirectional: "
        "layers[l*2 + d], state0 and h_n (2L, B, S_k), out (T, B, 2 S_0)");
  m.def("train_forward", &rnnkit::train_forward, arg("spec"), arg("x"), arg("state0"), arg("layers"),
        "out, h_n, keep = train_forward(spec, x, state0, layers): a stack's forward (one direction, no noise), "
        "keeping per layer what train_backward reads");
  m.def("train_backward", &rnnkit::train_backward, arg("spec"), arg("d_out"), arg("d_h_n"), arg("x"), arg("state0"),
        arg("layers"), arg("keep"), arg("need_x"), arg("need_state0") = true,
        "dx, d_state0, d_layers = train_backward(spec, d_out, d_h_n, x, state0, layers, keep, need_x, need_state0): "
        "the stack's backward through time and its input projections, from train_forward's keep");
  m.def("cell_step", &rnnkit::cell_step, arg("kind"), arg("x"), arg("h"), arg("c"), arg("w_ih"), arg("w_hh"),
        arg("b_ih"), arg("b_hh"),
        "[h'] or [h', c'] = cell_step(kind, x, h, c, w_ih, w_hh, b_ih, b_hh): one differentiated step of a "
        "plain cell as one autograd node (cell_step.h)");
  m.def("step", &rnnkit::step, "out, h_n = step(spec, x, state0, layers): one streaming step, no autograd");
  // module_local: two builds of the kernels (say, before and after a change) can be loaded in one
  // process and their calls interleaved, the only comparison the shared machine's slow spells allow
  pybind11::class_<rnnkit::Stepper>(m, "Stepper", pybind11::module_local(),
                                    "Streaming inference into preallocated buffers (see stream.h)")
      .def(pybind11::init<std::string, const std::vector<int64_t>&, const std::vector<rnnkit::OptTensors>&,
                          int64_t>(),
           "Stepper(who, spec, params, batch): params per layer [w_ih, b_ih, *rec_params]")
      .def("step", &rnnkit::Stepper::step, "out = step(x): one step, states updated in place")
      .def("state", &rnnkit::Stepper::state, "the current states (L, B, S_k), live buffers")
      .def("set_state", &rnnkit::Stepper::set_state, "copy (L, B, S_k) tensors into the current states")
      .def("set_params", &rnnkit::Stepper::set_params,
           "set_params(params): bind the parameters read again (the sizes and dtype of creation)");
  m.def("bernoulli_hash", &rnnkit::bernoulli_hash, arg("out"), arg("threshold"), arg("k0"), arg("k1"), arg("value"),
        "bernoulli_hash(out, threshold, k0, k1, value): out[i] = value where the hash of i and the keys is below "
        "threshold (of 2^24), else 0; in place (rnnkit/noise.py)");
  m.def("pool_release", &rnnkit::pool_release, "bytes = pool_release(): free the buffers cached by pool.h");
  m.def("pool_cached", &rnnkit::pool_cached, "the bytes of buffers pool.h caches now");
  m.def("pool_limit", &rnnkit::pool_limit, "the bytes pool.h may cache (RNNKIT_CPU_POOL_MB)");
  m.def(
      "pooled_empty",
      [](const std::vector<int64_t>& sizes, at::ScalarType dtype) {
        return rnnkit::pooled_empty(sizes, at::TensorOptions().dtype(dtype));
      },
      arg("sizes"), arg("dtype"),
      "pooled_empty(sizes, dtype): an uninitialised CPU tensor, from pool.h's cache when it is large");
  m.def("has_blas", &rnnkit::has_blas, "whether the time loops call BLAS directly");
  for (const bool back : {false, true}) {
    const char* name = back ? "rows_to_user" : "rows_to_run";
    m.def(
        name,
        [back, name](const rnnkit::Tensor& x, const rnnkit::Tensor& order, const rnnkit::Tensor& lengths) {
          TORCH_CHECK_VALUE(x.dim() == 3 && x.device().is_cpu(), name, ": expected a (T, B, F) CPU tensor, got ",
                            x.sizes(), " on ", x.device());
          const rnnkit::RunOrder run = rnnkit::RunOrder::given(order, lengths, x.size(0));
          return back ? run.to_user(x, true) : run.gather(x, true);
        },
        arg("x"), arg("order"), arg("lengths"),
        back ? "rows_to_user(x, order, lengths): rows_to_run's inverse (the user's row order[i] is x's row i), "
               "zeros on padded steps, a new tensor"
             : "rows_to_run(x, order, lengths): x (T, B, F) with row i the user's row order[i] and zeros past "
               "lengths[i] (the run's non-increasing lengths), a new tensor");
  }
  m.def(
      "unpack_rows",
      [](const rnnkit::Tensor& data, const rnnkit::Tensor& batch_sizes) {
        TORCH_CHECK_VALUE(data.device().is_cpu(), "unpack_rows: data: expected a CPU tensor");
        const rnnkit::RunOrder run = rnnkit::RunOrder::packed(batch_sizes, "unpack_rows");
        rnnkit::Tensor lengths = at::empty({static_cast<int64_t>(run.len.size())}, at::kLong);
        std::copy(run.len.begin(), run.len.end(), lengths.data_ptr<int64_t>());
        return std::make_tuple(run.unpack(data), lengths);
      },
      arg("data"), arg("batch_sizes"),
      "x, lengths = unpack_rows(data, batch_sizes): a PackedSequence's data (N, F) as (T, B, F), zeros on padded "
      "steps (pad_packed_sequence in one pass), and its rows' lengths");
  m.def(
      "pack_rows",
      [](const rnnkit::Tensor& t, const rnnkit::Tensor& batch_sizes) {
        TORCH_CHECK_VALUE(t.device().is_cpu(), "pack_rows: t: expected a CPU tensor");
        return rnnkit::RunOrder::packed(batch_sizes, "pack_rows").pack(t);
      },
      arg("t"), arg("batch_sizes"),
      "pack_rows(t, batch_sizes): t (T, B, F) as a PackedSequence's data (N, F), the valid rows step by step");
  m.def("project_rows", &rnnkit::project_rows, arg("x"), arg("order"), arg("lengths"), arg("w"), arg("bias"),
        "xp = project_rows(x, order, lengths, w, bias): the first layer's input projection of a batch "
        "with lengths in the run's row order, padded steps skipped (gemm.h)");
}
