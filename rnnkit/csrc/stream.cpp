// The Stepper of stream.h: buffers and views are made once in the constructor; a step only
// checks its input, projects it, runs each layer's kernel (the cell's run, T = 1) and flips the
// state sets.  Tensors, shapes and aliasing: see stream.h.
#include "stream.h"

#include "gemm.h"
#include "loop.h"

#include <ATen/Dispatch.h>
#include <ATen/core/grad_mode.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>

#include <sstream>

namespace rnnkit {
namespace {

std::string shape(const Tensor& t) {
  std::ostringstream s;
  s << "(";
  for (int64_t d = 0; d < t.dim(); ++d) s << (d ? ", " : "") << t.size(d);
  s << (t.dim() == 1 ? ",)" : ")");
  return s.str();
}

// A dtype as Python names it, so that messages read as those of the Python checks.
std::string py_dtype(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return "torch.float32";
    case at::kDouble: return "torch.float64";
    case at::kHalf: return "torch.float16";
    case at::kBFloat16: return "torch.bfloat16";
    default: return std::string("torch.") + c10::toString(t);
  }
}

// The rec params of one layer with every None bias replaced by zeros sized like the weight before it.
OptTensors rec_with_zero_bias(const OptTensors& p) {
  OptTensors rec(p.begin() + 2, p.end());
  for (size_t i = 1; i < rec.size(); ++i) rec[i] = or_zeros(rec[i], rec[i - 1]->size(0), rec[i - 1]->options());
  return rec;
}

}  // namespace

Stepper::Stepper(std::string who, const std::vector<int64_t>& spec, const std::vector<OptTensors>& params,
                 int64_t batch)
    : who_(std::move(who)), sp_(decode_spec(spec)), params_(params) {
  TORCH_CHECK(!params.empty() && batch > 0, "rnnkit: Stepper needs layers and a positive batch");
  const Cell& cell = *sp_.cell;
  L_ = static_cast<int64_t>(params.size());
  B_ = batch;
  const Tensor& w0 = *params[0][0];
  I_ = w0.size(1);
  dtype_ = w0.scalar_type();
  const auto opt = w0.options();
  const int64_t H = w0.size(0) / cell.gates;
  for (int64_t l = 0; l < L_; ++l) {
    rec_.push_back(rec_with_zero_bias(params[l]));
    xp_.push_back(at::empty({1, B_, cell.gates * H}, opt));
    Tensors work = cell.buffers(sp_, 1, B_, H, rec_[l], false, opt);
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

void Stepper::check_input(const Tensor& x) const {
  const bool batched = x.dim() == 2 && x.size(0) == B_ && x.size(1) == I_;
  const bool single = x.dim() == 1 && B_ == 1 && x.size(0) == I_;
  TORCH_CHECK_VALUE(batched || single, who_, ": input: expected shape (", B_, ", ", I_,
                    ") (batch_size, input_size)", B_ == 1 ? " or (" + std::to_string(I_) + ",)" : "",
                    ", got ", shape(x));
  TORCH_CHECK_TYPE(x.scalar_type() == dtype_, who_, ": input: expected dtype ", py_dtype(dtype_),
                   " (the parameters' dtype), got ", py_dtype(x.scalar_type()));
  TORCH_CHECK_VALUE(x.device().is_cpu(), who_, ": input: expected a CPU tensor, got device ", x.device());
  TORCH_CHECK_VALUE(!(x.requires_grad() && at::GradMode::is_enabled()), who_,
                    ": input requires grad, but a stream records no autograd graph (inference only); "
                    "use model.step for a differentiable step, or call it under torch.no_grad()");
}

// Parameters are held by reference: a module converted in place (.double(), .to()) changes them.
void Stepper::check_params() const {
  for (const auto& layer : params_)
    for (const auto& p : layer)
      if (p.has_value() && p->defined())
        TORCH_CHECK(p->scalar_type() == dtype_ && p->is_contiguous() && p->device().is_cpu(), who_,
                    ": the module's parameters changed dtype, device or layout since the stream was "
                    "created (", py_dtype(dtype_), " expected, got ", py_dtype(p->scalar_type()),
                    "); create a new stream");
}

template <typename T>
void Stepper::run(const T* x, int nxt) {
  for (int64_t l = 0; l < L_; ++l) {
    const OptTensors& p = params_[l];
    const Tensor& w = *p[0];
    const int64_t in = w.size(1), GH = w.size(0), S0 = states_[nxt][0].size(2);
    const T* inp = l == 0 ? x : states_[nxt][0].data_ptr<T>() + (l - 1) * B_ * S0;
    const bool bias = p[1].has_value() && p[1]->defined();
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
  TORCH_CHECK(s.size() == states_[cur_].size(), "rnnkit: set_state: expected ", states_[cur_].size(),
              " tensors, got ", s.size());
  for (size_t k = 0; k < s.size(); ++k) states_[cur_][k].copy_(s[k]);
}

}  // namespace rnnkit
