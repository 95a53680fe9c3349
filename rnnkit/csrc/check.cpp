// The argument checks of check.h.
#include "check.h"

#include <c10/util/Exception.h>

#include <sstream>

namespace rnnkit {

std::string Name::str() const {
  std::string s = base;
  if (index >= 0) s += "[" + std::to_string(index) + "]";
  if (layer >= 0) s += "_l" + std::to_string(layer);
  return s;
}

std::string shape_str(at::IntArrayRef sizes) {
  std::ostringstream s;
  s << "(";
  for (size_t d = 0; d < sizes.size(); ++d) s << (d ? ", " : "") << sizes[d];
  s << (sizes.size() == 1 ? ",)" : ")");
  return s.str();
}

std::string py_dtype(at::ScalarType t) { return "torch." + std::string(c10::getDtypeNames(t).first); }

Checker::Checker(std::string who, const Spec& spec)
    : who_(std::move(who)), spec_(spec), cell_(*spec.cell), rec_(spec.cell->rec(spec)), states_(states_of(spec)) {
  std::fill(val_, val_ + kNumSyms, int64_t(-1));
  if (spec.proj > 0) val_[kP] = spec.proj, from_[kP] = Name{"the spec's proj_size"};
  val_[kG] = cell_.gates, from_[kG] = Name{"the cell's gate blocks"};
}

namespace {
// A size given as a multiple of another: G*H and 3*H are multiples of H.
Sym base_of(Sym s) { return s == kGH || s == kH3 ? kH : s; }
}  // namespace

int64_t Checker::factor(Sym s) const { return s == kGH ? cell_.gates : s == kH3 ? 3 : 1; }

std::string Checker::sym_name(Sym s) const {
  switch (s) {
    case kT: return "T";
    case kB: return "B";
    case kL: return "L";
    case kI: return "I";
    case kH: return "H";
    case kGH: return std::to_string(cell_.gates) + "*H";
    case kO: return "O";
    case kH3: return "3*H";
    case kP: return "P";
    case kG: return "G";
    case kDS: return "2*" + sym_name(states_[0]);
    default: return "?";
  }
}

void Checker::fix(Sym s, int64_t value, const Name& from) {
  if (base_of(s) != s) {
    TORCH_CHECK(value % factor(s) == 0, who_, ": ", from.str(), ": expected a size divisible by ", factor(s),
                " (", factor(s), " blocks of H), got ", value);
    value /= factor(s), s = kH;
  }
  TORCH_CHECK(val_[s] < 0 || val_[s] == value, who_, ": ", from.str(), ": ", sym_name(s), " = ", value,
              " disagrees with ", sym_name(s), " = ", val_[s], " from ", from_[s].str());
  if (val_[s] < 0) val_[s] = value, from_[s] = from;
}

void Checker::shape_error(const Name& name, const Tensor& t, const std::vector<Sym>& dims) const {
  std::ostringstream want, why;
  want << "(";
  const char* sep = "";
  bool told[kNumSyms] = {};
  for (size_t d = 0; d < dims.size(); ++d) {
    const Sym s = base_of(dims[d]);
    want << (d ? ", " : "");
    if (val_[s] < 0) {
      want << sym_name(dims[d]);
      continue;
    }
    want << factor(dims[d]) * val_[s];
    if (!told[s]) why << sep << sym_name(s) << " = " << val_[s] << " from " << from_[s].str(), sep = ", ";
    told[s] = true;
  }
  want << (dims.size() == 1 ? ",)" : ")");
  std::ostringstream names;
  for (size_t d = 0; d < dims.size(); ++d) names << (d ? ", " : "") << sym_name(dims[d]);
  const std::string reasons = why.str();
  TORCH_CHECK(false, who_, ": ", name.str(), ": expected shape ", want.str(), " (", names.str(),
              reasons.empty() ? "" : "; ", reasons, "), got ", shape_str(t.sizes()));
}

void Checker::tensor(const Name& name, const Tensor& t, const std::vector<Sym>& dims) {
  TORCH_CHECK_TYPE(t.defined(), who_, ": ", name.str(), ": expected a tensor, got None");
  const at::ScalarType st = t.scalar_type();
  if (dtype_ == at::ScalarType::Undefined) {
    TORCH_CHECK_TYPE(st == at::kFloat || st == at::kDouble, who_, ": ", name.str(),
                     ": expected dtype torch.float32 or torch.float64, got ", py_dtype(st));
    dtype_ = st, dtype_from_ = name;
  }
  TORCH_CHECK_TYPE(st == dtype_, who_, ": ", name.str(), ": expected dtype ", py_dtype(dtype_), " (that of ",
                   dtype_from_.str(), "), got ", py_dtype(st));
  TORCH_CHECK(t.device().is_cpu(), who_, ": ", name.str(), ": expected a CPU tensor, got device ", t.device());
  if (t.dim() != static_cast<int64_t>(dims.size())) shape_error(name, t, dims);
  for (size_t d = 0; d < dims.size(); ++d) {
    const Sym s = base_of(dims[d]);
    const int64_t n = t.size(static_cast<int64_t>(d));
    if (val_[s] < 0) {
      fix(dims[d], n, name);
      continue;
    }
    if (n != factor(dims[d]) * val_[s]) shape_error(name, t, dims);
  }
}

void Checker::optional(const Name& name, const c10::optional<Tensor>& t, const std::vector<Sym>& dims,
                       bool allowed) {
  if (t.has_value() && t->defined()) return tensor(name, *t, dims);
  TORCH_CHECK_TYPE(allowed, who_, ": ", name.str(), ": expected a tensor, got None");
}

void Checker::count(const char* name, size_t got, size_t expected) const {
  TORCH_CHECK(got == expected, who_, ": ", name, ": expected ", expected, " tensor", expected == 1 ? "" : "s",
              " for the '", cell_.name, "' cell, got ", got);
}

namespace {
std::vector<Sym> with(std::vector<Sym> prefix, Sym last) {
  prefix.push_back(last);
  return prefix;
}
}  // namespace

void Checker::tensors(const char* name, const Tensors& ts, const std::vector<Sym>& prefix,
                      const std::vector<Sym>& sizes) {
  count(name, ts.size(), sizes.size());
  for (size_t k = 0; k < ts.size(); ++k) tensor(Name{name, static_cast<int64_t>(k)}, ts[k], with(prefix, sizes[k]));
}

void Checker::optionals(const char* name, const OptTensors& ts, const std::vector<Sym>& prefix,
                        const std::vector<Sym>& sizes) {
  count(name, ts.size(), sizes.size());
  for (size_t k = 0; k < ts.size(); ++k)
    optional(Name{name, static_cast<int64_t>(k)}, ts[k], with(prefix, sizes[k]), true);
}

void Checker::mask(const c10::optional<Tensor>& mask) {
  if (!mask.has_value() || !mask->defined()) return;
  const Tensor& m = *mask;
  TORCH_CHECK_TYPE(m.scalar_type() == at::kBool, who_, ": mask: expected dtype torch.bool, got ",
                   py_dtype(m.scalar_type()));
  TORCH_CHECK(m.device().is_cpu(), who_, ": mask: expected a CPU tensor, got device ", m.device());
  const bool ok = m.dim() == 3 && m.size(0) == val_[kT] && m.size(1) == val_[kB] && m.size(2) == 1;
  TORCH_CHECK(ok, who_, ": mask: expected shape (", val_[kT], ", ", val_[kB], ", 1) (T, B, 1; T = ", val_[kT],
              " from ", from_[kT].str(), ", B = ", val_[kB], " from ", from_[kB].str(), "), got ",
              shape_str(m.sizes()));
}

void Checker::noise(const Tensors& noise) {
  if (noise.empty()) return;
  const std::vector<Sym> sizes = noise_sizes(spec_);
  TORCH_CHECK(!sizes.empty(), who_, ": noise: expected none (the spec has no recurrent dropout or zoneout), got ",
              noise.size(), " tensors");
  tensors("noise", noise, {kT, kB}, sizes);
}

void Checker::rec(const OptTensors& rec, int64_t layer, const std::vector<std::string>& names) {
  const std::vector<ParamDecl>& decl = rec_;
  TORCH_CHECK(names.empty() || names.size() == decl.size(), who_, ": names: expected ", decl.size(),
              " names, got ", names.size());
  TORCH_CHECK(rec.size() == decl.size(), who_, ": ", layer >= 0 ? "layers" : "rec", ": expected ", decl.size(),
              " recurrent parameters for the '", cell_.name, "' cell, got ", rec.size());
  for (size_t i = 0; i < decl.size(); ++i)
    optional(Name{names.empty() ? decl[i].name : names[i].c_str(), -1, layer}, rec[i], decl[i].dims,
             decl[i].optional);
}

void Checker::layer(const OptTensors& p, int64_t layer, int64_t directions) {
  TORCH_CHECK(p.size() == 2 + rec_.size(), who_, ": layers[", layer, "]: expected ", 2 + rec_.size(),
              " tensors [weight_ih, bias_ih, ", rec_.size(), " recurrent parameters] for the '", cell_.name,
              "' cell, got ", p.size());
  Sym in = layer < directions ? kI : states_[0];
  if (layer >= directions && directions == 2) {           // the first layers fixed the emitted state
    if (val_[kDS] < 0 && val_[states_[0]] >= 0)
      val_[kDS] = 2 * val_[states_[0]], from_[kDS] = Name{"the two directions' emitted states"};
    in = kDS;
  }
  optional(Name{"weight_ih", -1, layer}, p[0], {kGH, in}, false);
  optional(Name{"bias_ih", -1, layer}, p[1], {kGH}, true);
  rec(OptTensors(p.begin() + 2, p.end()), layer);
}

}  // namespace rnnkit
