// Argument checks of the Python entry points (bindings.cpp, stream.cpp): nothing from Python is
// trusted.  Before a kernel touches a pointer, every tensor's presence, dims, sizes, dtype and
// device are checked against the sizes the other arguments fix (the Syms of rnn.h: T, B, L, I,
// H, G*H, O), and every list's length against the cell's table row.  A failed check is an
// exception that names the argument (and, for a size, the argument that fixed it):
//   wrong shape, count or device  RuntimeError
//   wrong dtype, None or a non-tensor where a tensor is required  TypeError
// Contiguity is not required here: the entry points make dense copies where needed, and the
// Stepper, which holds the module's own tensors, checks it itself (stream.cpp).
#pragma once

#include "rnn.h"

#include <string>

namespace rnnkit {

// An argument's name for messages, composed only when one is printed: base, base[index]
// (a list entry) or base_l<layer> (a parameter of layer `layer` of a stack).
struct Name {
  const char* base = "";
  int64_t index = -1;
  int64_t layer = -1;
  std::string str() const;
};

class Checker {
 public:
  // who starts every message ("rnnkit.forward", "LSTM.stream", ...); the spec gives the cell
  // and its rec params and noise.
  Checker(std::string who, const Spec& spec);

  // Fixes s to value, said to come from `from`; an error if another argument fixed it otherwise.
  void fix(Sym s, int64_t value, const Name& from);
  // Fixes the dtype every tensor must have (else the first tensor checked fixes it).
  void fix_dtype(at::ScalarType dtype, const Name& from) { dtype_ = dtype, dtype_from_ = from; }
  // A defined CPU tensor of the entry point's dtype (float32 or float64; the first tensor fixes
  // it) whose sizes are dims, each fixed here if it is not yet.
  void tensor(const Name& name, const Tensor& t, const std::vector<Sym>& dims);
  // The same for an optional tensor; None (or an undefined tensor) passes when allowed.
  void optional(const Name& name, const c10::optional<Tensor>& t, const std::vector<Sym>& dims, bool allowed);
  // A list of n entries, each with the sizes prefix + [one Sym of sizes] (state lists).
  void tensors(const char* name, const Tensors& ts, const std::vector<Sym>& prefix, const std::vector<Sym>& sizes);
  void optionals(const char* name, const OptTensors& ts, const std::vector<Sym>& prefix,
                 const std::vector<Sym>& sizes);
  // mask: None, or a bool (T, B, 1) CPU tensor.
  void mask(const c10::optional<Tensor>& mask);
  // noise: empty (eval), or one (T, B, N_k) tensor per entry of the spec's noise_sizes.
  void noise(const Tensors& noise);
  // The cell's rec params of one layer (layer -1: no suffix), names from names[i] when given.
  void rec(const OptTensors& rec, int64_t layer, const std::vector<std::string>& names = {});
  // One layer of a stack, [w_ih, b_ih | None, rec params...]; its input size is I for the first
  // layer and the emitted state's size for the others, with directions = 2 (layers[l*2 + d]) I
  // for the first two and twice the emitted state's size for the others.
  void layer(const OptTensors& p, int64_t layer, int64_t directions = 1);
  // A list's length.
  void count(const char* name, size_t got, size_t expected) const;

  int64_t size(Sym s) const { return val_[s]; }
  const std::vector<Sym>& states() const { return states_; }
  at::ScalarType dtype() const { return dtype_; }

 private:
  [[noreturn]] void shape_error(const Name& name, const Tensor& t, const std::vector<Sym>& dims) const;
  std::string sym_name(Sym s) const;
  int64_t factor(Sym s) const;

  std::string who_;
  const Spec spec_;
  const Cell& cell_;
  const std::vector<ParamDecl> rec_;
  const std::vector<Sym> states_;     // the carried states' sizes (states_of)
  int64_t val_[kNumSyms];
  Name from_[kNumSyms];
  at::ScalarType dtype_ = at::ScalarType::Undefined;
  Name dtype_from_;
};

// "(2, 3)", "(3,)": a shape as Python prints it.
std::string shape_str(at::IntArrayRef sizes);
// "torch.float32": a dtype as Python names it.
std::string py_dtype(at::ScalarType t);

}  // namespace rnnkit
