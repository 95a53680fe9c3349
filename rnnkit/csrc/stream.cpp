// The Stepper of stream.h: buffers and views are made once in the constructor; a step only
// checks its input and the held parameters, projects the input, runs each layer's kernel (the
// cell's run, T = 1) and flips the state sets.  Tensors, shapes, aliasing and checks: see stream.h.
#include "stream.h"

#include "gemm.h"
#include "loop.h"

#include <ATen/Dispatch.h>
#include <ATen/core/grad_mode.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>

namespace rnnkit {
namespace {

// The rec params of one layer with every None bias replaced by zeros sized like the weight before it.
OptTensors rec_with_zero_bias(const OptTensors& p) {
  OptTensors rec(p.begin() + 2, p.end());
  for (size_t i = 1; i < rec.size(); ++i) rec[i] = or_zeros(rec[i], rec[i - 1]->size(0), rec[i - 1]->options());
  return rec;
}

c10::optional<Tensor> dense(const c10::optional<Tensor>& t) {
  if (!t.has_value() || !t->defined()) return c10::nullopt;
  return t->is_contiguous() ? *t : t->contiguous();
}

const Name kCreated{"the stream's parameters at creation"};

}  // namespace

Stepper::Stepper(std::string who, const std::vector<int64_t>& spec, const std::vector<OptTensors>& params,
                 int64_t batch)
    : who_(std::move(who)), sp_(decode_spec(spec)) {
  TORCH_CHECK_VALUE(batch > 0, who_, ": batch_size: expected a positive integer, got ", batch);
  TORCH_CHECK(!params.empty(), who_, ": layers: expected at least one layer, got none");
  B_ = batch;
  bind(params);
  const Cell& cell = *sp_.cell;
  const auto opt = params_[0][0]->options();
  for (int64_t l = 0; l < L_; ++l) {
    xp_.push_back(at::empty({1, B_, cell.gates * H_}, opt));
    Tensors work = cell.buffers(sp_, 1, B_, H_, rec_[l], false, opt);
    if (l == 0)                                               // the state sizes S_k: (1, B, S_k) slots
      for (int p = 0; p < 2; ++p)
        for (int64_t k = 0; k < cell.n_states; ++k) states_[p].push_back(at::zeros({L_, B_, work[k].size(2)}, opt));
    for (int p = 0; p < 2; ++p) {
      Tensors in, out = work;
      for (size_t k = 0; k < states_[p].size(); ++k) {
        in.push_back(states_[p][k].select(0, l));                 // (B, S_k)
        out[k] = states_[p][k].narrow(0, l, 1);                   // (1, B, S_k)
      }
      args_[p].push_back(FwdArgs{xp_[l], Tensor(), in, rec_[l], false});
      bufs_[p].push_back(out);
    }
  }
  out_ = at::zeros({B_, states_[0][0].size(2)}, opt);
  out1_ = out_.view({-1});
}

Checker Stepper::checker() const {
  Checker c(who_, sp_);
  c.fix(kB, B_, {"batch_size"});
  if (held_.empty()) return c;
  c.fix_dtype(dtype_, kCreated);
  c.fix(kL, L_, kCreated);
  c.fix(kI, I_, kCreated);
  c.fix(kH, H_, kCreated);
  if (O_ >= 0) c.fix(kO, O_, kCreated);
  return c;
}

// Checks params (against the sizes of creation, after the constructor) and holds them.
void Stepper::bind(const std::vector<OptTensors>& params) {
  Checker c = checker();
  c.fix(kL, static_cast<int64_t>(params.size()), {"layers"});
  for (size_t l = 0; l < params.size(); ++l) c.layer(params[l], static_cast<int64_t>(l));
  L_ = c.size(kL), I_ = c.size(kI), H_ = c.size(kH), O_ = c.size(kO), dtype_ = c.dtype();
  const std::vector<ParamDecl> decl = sp_.cell->rec(sp_);
  params_.clear(), rec_.clear(), held_.clear();
  for (int64_t l = 0; l < L_; ++l) {
    OptTensors p;
    for (const auto& t : params[l]) p.push_back(dense(t));
    const char* names[2] = {"weight_ih", "bias_ih"};
    for (size_t i = 0; i < p.size(); ++i)
      if (p[i].has_value())
        held_.push_back({*p[i], Name{i < 2 ? names[i] : decl[i - 2].name, -1, l}, p[i]->sizes().vec()});
    rec_.push_back(rec_with_zero_bias(p));
    params_.push_back(std::move(p));
  }
  for (int p = 0; p < 2; ++p)
    for (size_t l = 0; l < args_[p].size(); ++l) args_[p][l].rec = rec_[l];
}

void Stepper::set_params(const std::vector<OptTensors>& params) { bind(params); }

void Stepper::check_input(const Tensor& x) const {
  const bool batched = x.dim() == 2 && x.size(0) == B_ && x.size(1) == I_;
  const bool single = x.dim() == 1 && B_ == 1 && x.size(0) == I_;
  TORCH_CHECK_VALUE(batched || single, who_, ": input: expected shape (", B_, ", ", I_,
                    ") (batch_size, input_size)", B_ == 1 ? " or (" + std::to_string(I_) + ",)" : "",
                    ", got ", shape_str(x.sizes()));
  TORCH_CHECK_TYPE(x.scalar_type() == dtype_, who_, ": input: expected dtype ", py_dtype(dtype_),
                   " (the parameters' dtype), got ", py_dtype(x.scalar_type()));
  TORCH_CHECK_VALUE(x.device().is_cpu(), who_, ": input: expected a CPU tensor, got device ", x.device());
  TORCH_CHECK_VALUE(!(x.requires_grad() && at::GradMode::is_enabled()), who_,
                    ": input requires grad, but a stream records no autograd graph (inference only); "
                    "use model.step for a differentiable step, or call it under torch.no_grad()");
}

// The held tensors are the module's: ``p.data = other``, .double(), .to() change them in place.
void Stepper::check_params() const {
  for (const Held& h : held_) {
    const Tensor& t = h.t;
    if (t.sizes() == at::IntArrayRef(h.sizes) && t.scalar_type() == dtype_ && t.is_contiguous() &&
        t.device().is_cpu())
      continue;
    TORCH_CHECK(false, who_, ": ", h.name.str(), " changed since the stream was created: it is now ",
                shape_str(t.sizes()), ", ", py_dtype(t.scalar_type()), t.is_contiguous() ? ", contiguous" : ", non-contiguous",
                ", on ", t.device(), "; the stream was made for ", shape_str(h.sizes), ", ", py_dtype(dtype_),
                ", contiguous, on cpu; create a new stream");
  }
}

template <typename T>
void Stepper::run(const T* x, int nxt) {
  for (int64_t l = 0; l < L_; ++l) {
    const OptTensors& p = params_[l];
    const Tensor& w = *p[0];
    const int64_t in = w.size(1), GH = w.size(0), S0 = states_[nxt][0].size(2);
    const T* inp = l == 0 ? x : states_[nxt][0].data_ptr<T>() + (l - 1) * B_ * S0;
    const bool bias = p[1].has_value();
    project_into<T>(inp, B_, in, w.data_ptr<T>(), bias ? p[1]->data_ptr<T>() : nullptr, GH, xp_[l].data_ptr<T>());
    sp_.cell->run(sp_, args_[1 - nxt][l], bufs_[nxt][l]);
  }
  const int64_t n = out_.numel();
  std::memcpy(out_.data_ptr<T>(), states_[nxt][0].data_ptr<T>() + (L_ - 1) * n, n * sizeof(T));
}

Tensor Stepper::step(const Tensor& x) {
  check_input(x);
  check_params();
  const Tensor xc = x.is_contiguous() ? x : x.contiguous();
  const int nxt = 1 - cur_;
  AT_DISPATCH_FLOATING_TYPES(dtype_, "rnnkit_stream", [&] { run<scalar_t>(xc.data_ptr<scalar_t>(), nxt); });
  cur_ = nxt;
  return x.dim() == 1 ? out1_ : out_;
}

void Stepper::set_state(const Tensors& s) {
  Checker c = checker();
  c.tensors("state", s, {kL, kB}, c.states());
  for (size_t k = 0; k < s.size(); ++k) states_[cur_][k].copy_(s[k]);
}

}  // namespace rnnkit
