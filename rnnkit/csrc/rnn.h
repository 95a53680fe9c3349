// The contract of rnnkit's fused CPU kernels: what a kernel is given and returns, the spec that
// says which cell to run, and the table of cells.  The other headers: gemm.h (GEMM on raw
// pointers), activations.h (branch-free gate activations), loop.h (buffers, batch rows, masks and
// the backward time loop every cell shares).
//
// Every kernel runs the whole sequence of one layer and one direction.  Conventions used by
// all cells (T steps, B batch, H hidden, G gate blocks, S size of a carried state):
//
//   xp       (T, B, G*H)   input projection x W_ih^T + b_ih, computed by the caller in one GEMM
//   mask     (T, B, 1)     bool, true where step t is inside sequence b; undefined = all valid
//   state0   (B, S) each   initial carried states
//   states   (T, B, S)     carried state after every step (padded steps repeat the previous one)
//   saved    (T, B, .)     the cell's ``saved_names`` (post-activation gates, ...), also the trace;
//                          rows of padded steps are zero
//   noise    (T, B, N_k)   the cell's ``noise_names`` (training): [recurrent_mask (T, B, S_0)] when
//                          the spec has recurrent dropout, then [zoneout_<state> (T, B, S_k) per
//                          carried state] when it has zoneout; an empty list = eval (no dropout
//                          mask, zoneout by its probability p).  Drawn once in Python
//                          (Cell.draw_noise) and read, never written, by forward and backward
//                          alike.  A step's (B, N_k) slice must be dense; the step stride may be 0
//                          (the recurrent mask is one (B, S_0) mask expanded over time).
//
// The options every cell takes (cells/base.py states them; the kernels follow it exactly):
//   recurrent dropout  the state enters the recurrent matrix products as s_{t-1} * m_t; backward
//                      multiplies the gradient coming back through those products by m_t and the
//                      recurrent weight gradients use s_{t-1} * m_t
//   zoneout            s_t = s~_t + z_t (s_{t-1} - s~_t) for every carried state (s~_t: what the
//                      cell computed, saved as "<state>_update"); backward ds~_t = ds_t (1 - z_t),
//                      ds_{t-1} += ds_t z_t
//   clip_recurrent x   backward only: at every step, after d_out[t] is added, the gradient of every
//                      carried state is clamped to [-x, x] (padded rows too, as the reference does)
//
// Per step: one GEMM of the previous state with the recurrent weights, written straight into
// the step's output rows, then one fused, vectorisable pass over the gates.  Backward: the time
// loop produces only the gate gradients d_xp (T, B, G*H) and the carried state gradients;
// recurrent weight gradients are single GEMMs over all T*B rows after the loop.  Workspaces
// are allocated once per call, never inside the loop (except the per-step output of oneDNN's
// GEMM on large steps, copied into the step's rows: see StepWeight).
//
// Adding a cell is one new file <cell>.cpp: its kernels, and RNNKIT_REGISTER_CELL with the next
// free id (see "The cell table" below).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/TensorOptions.h>
#include <c10/util/Optional.h>

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace rnnkit {

using at::Tensor;
using Tensors = std::vector<Tensor>;
using OptTensors = std::vector<c10::optional<Tensor>>;

// The activations a spec names: hidden (Elman, Jordan) tanh or relu; Jordan's output identity,
// tanh, sigmoid or softmax.  The numbers are the spec's encoding (registry.cpp): never renumber.
enum Act : int64_t { kTanh = 0, kRelu = 1, kIdentity = 2, kSigmoid = 3, kSoftmax = 4 };

struct Cell;

// What a kernel is told about the cell it runs.  Built only by decode_spec (registry.cpp) from
// the int vector that make_spec returns to Python:
//   [cell id, act, out, reset_after, peephole, recurrent_dropout, zoneout, clip_recurrent, proj_size,
//    layer_norm]
// recurrent_dropout, zoneout and clip_recurrent are real numbers.  They travel in the same int64 vector as the IEEE-754 bit
// pattern of the double (std::memcpy, never a numeric conversion), so every entry point keeps one
// spec argument and a value round-trips exactly (Python's repr of a float parses back to the same
// double); 0 bits = 0.0 = the option is off.  make_spec checks their ranges, decode_spec again.
struct Spec {
  const Cell* cell;
  Act act;              // hidden activation (Elman, Jordan)
  Act out;              // Jordan output activation
  bool reset_after;     // GRU form
  bool peephole;        // LSTM: diagonal weights weight_ch (3H,) from c into i, f, o
  double dropout;       // recurrent dropout probability q in [0, 1): 0 = none
  double zoneout;       // zoneout probability p in [0, 1): 0 = none
  double clip;          // clip_recurrent bound x > 0: 0 = none
  int64_t proj;         // LSTM: proj_size P > 0 (h = (o * tanh c) W_hr^T has P features): 0 = none
  bool layer_norm;      // LSTM, GRU (torch form): each gate block of xp and of h W_hh^T normalised
                        // (and an LSTM's c before its tanh), with the gains weight_ln_* (norm.h)
  // The noise list's entry of the recurrent mask (-1: none) and of zoneout's first state (-1: none).
  int64_t noise_drop() const { return dropout > 0 ? 0 : -1; }
  int64_t noise_zone() const { return zoneout > 0 ? (dropout > 0 ? 1 : 0) : -1; }
};

struct FwdArgs {
  Tensor xp;            // (T, B, G*H) contiguous
  Tensor mask;          // (T, B) bool or undefined
  Tensors state0;       // (B, S_k)
  OptTensors rec;       // the cell's rec_params, None where absent
  bool save;            // keep the saved tensors (backward or trace needs them)
  Tensors noise = {};   // the cell's noise (T, B, N_k), empty = eval (see above)
};

struct FwdResult {
  Tensors states;       // (T, B, S_k)
  Tensors saved;        // the cell's saved_names, (T, B, .)
};

struct BwdArgs {
  Tensor d_out;         // (T, B, S_0) or undefined; any strides (see GradOut)
  OptTensors d_final;   // (B, S_k), None = zero
  Tensor mask;
  Tensors state0, states, saved;
  OptTensors rec;
  Tensors noise = {};   // the same noise forward ran with
  // false: the caller drops d_state0, so a GEMM-path backward may skip step 0's recurrent products
  // (a fourth of a one-step call's; backward_steps, loop.h); d_state0 is then left incomplete
  bool need_state0 = true;
};

struct BwdResult {
  Tensor d_xp;          // (T, B, G*H)
  Tensors d_state0;     // (B, S_k)
  OptTensors d_rec;     // one per rec param, None where the parameter is None
};

// A cell's kernels.  forward allocates its buffers and runs; backward is backpropagation
// through time.  buffers allocates those of a forward run of T steps: the carried states
// (T, B, S_k) first, then the cell's saved tensors and workspaces (with save = false, (B, .)
// workspaces reused by every step), as each cell's header comment lists them; rec are the rec
// params, read for sizes that are not H (Jordan's output size).  run runs T steps into given
// buffers: the streaming step (bindings.cpp, stream.cpp) allocates them once and calls run on
// every step with its own state views in the first slots.
using ForwardFn = FwdResult (*)(const Spec&, const FwdArgs&);
using BackwardFn = BwdResult (*)(const Spec&, const BwdArgs&);
using BuffersFn = Tensors (*)(const Spec&, int64_t T, int64_t B, int64_t H, const OptTensors& rec, bool save,
                              const at::TensorOptions&);
using RunFn = void (*)(const Spec&, const FwdArgs&, const Tensors& bufs);

// The sizes an entry point's tensors are checked against (check.h).  Each is fixed by the first
// argument that has it and must agree in all the others: T steps, B batch, L layers of a stack,
// I input size, H hidden size, GH = gates * H (fixes H), O a Jordan network's output size,
// H3 = 3 * H (fixes H; an LSTM's peephole weights), P a projected LSTM's emitted size (fixed by
// the spec), G the cell's number of gate blocks (a constant: layer_norm's per-block 1/std), DS
// the input size of a bidirectional stack's upper layers (2 x the emitted state's size).
enum Sym : int { kT, kB, kL, kI, kH, kGH, kO, kH3, kP, kG, kDS, kNumSyms };

// A recurrent parameter: its name (the Python cell's rec_params entry, without the layer
// suffix), its sizes, and whether it may be None (a bias).
struct ParamDecl {
  const char* name;
  std::vector<Sym> dims;
  bool optional;
};

// The feature size of each saved tensor (T, B, .), for a spec (GRU's forms save different ones;
// zoneout appends one per carried state: zoneout_saved below).
using SavedFn = std::vector<Sym> (*)(const Spec&);
// The rec params of a spec (an LSTM with peepholes has weight_ch after bias_hh).
using RecFn = std::vector<ParamDecl> (*)(const Spec&);

// One row of the cell table.
struct Cell {
  const char* name;     // the Python cell's name (Cell.name)
  int64_t id;           // its index in the table and the spec's first entry
  int64_t gates;        // gate blocks per hidden unit: xp and d_xp are (T, B, gates * H)
  int64_t n_states;     // carried states: the first n_states buffers
  ForwardFn forward;
  BackwardFn backward;
  BuffersFn buffers;
  RunFn run;
  std::vector<Sym> states;      // each carried state's size S_k (n_states entries; states_of: for a spec)
  RecFn rec;                    // the rec params, in the Python cell's rec_params order
  SavedFn saved;                // the saved tensors' feature sizes
};

// The carried states' sizes of a spec: the cell's, with P for the emitted one when projected.
inline std::vector<Sym> states_of(const Spec& sp) {
  std::vector<Sym> s = sp.cell->states;
  if (sp.proj > 0) s[0] = kP;
  return s;
}
// The saved tensors' sizes with zoneout's "<state>_update" of every carried state appended.
inline std::vector<Sym> zoneout_saved(const Spec& sp, std::vector<Sym> own) {
  const std::vector<Sym> states = states_of(sp);
  if (sp.zoneout > 0) own.insert(own.end(), states.begin(), states.end());
  return own;
}
// The noise tensors' sizes of a spec in training (see the conventions at the top).
inline std::vector<Sym> noise_sizes(const Spec& sp) {
  const std::vector<Sym> states = states_of(sp);
  std::vector<Sym> sizes;
  if (sp.dropout > 0) sizes.push_back(states[0]);
  if (sp.zoneout > 0) sizes.insert(sizes.end(), states.begin(), states.end());
  return sizes;
}

// ---- the cell table ----------------------------------------------------------------------
// Each cell's file adds its row when the library loads, with RNNKIT_REGISTER_CELL(Cell{...}).
// How ids are assigned: each registration states its id; it is not the registration order (the
// static initialisers of different files run in an unspecified order).  The ids must be 0..n-1,
// each used once, the names unique and each row's state sizes given, which check_cells verifies
// when the Python module loads (an ImportError otherwise).  The first four keep the numbers
// rnnkit/backends/cpu.py gave them before make_spec (elman 0, jordan 1, lstm 2, gru 3), so that a
// spec built there stays valid.
// A new cell takes the next free id.
struct CellRegistrar {
  explicit CellRegistrar(const Cell& cell);
};
#define RNNKIT_REGISTER_CELL(...) static const ::rnnkit::CellRegistrar rnnkit_cell_registrar{__VA_ARGS__}

// Sorts the table by id and checks the ids and names (TORCH_CHECK).
void check_cells();
// The table, by id (after check_cells), and its names.
const std::vector<Cell>& cells();
std::vector<std::string> cell_names();

// ---- the spec ----------------------------------------------------------------------------
// The spec (see Spec) for the cell named name; options: "nonlinearity" (tanh | relu),
// "output_activation" (identity | tanh | sigmoid | softmax), "reset_after" (1 | 0), "peephole"
// (1 | 0; LSTM only), "layer_norm" (0 | 1; LSTM and the GRU's torch form), "recurrent_dropout" and "zoneout" (a number in [0, 1); zoneout not on a
// Jordan network), "clip_recurrent" (a positive finite number), "proj_size" (a positive integer;
// LSTM only); absent ones take their default
// (the first value, 0).  A cell ignores the choice options it does not read.  An unknown name,
// option or value, or an option the cell does not take, is a ValueError that names it, the
// expected values and the value received.
std::vector<int64_t> make_spec(const std::string& name, const std::map<std::string, std::string>& options);
// The Spec of such a vector (checked: a ValueError when it is not one make_spec can return).
Spec decode_spec(const std::vector<int64_t>& spec);

}  // namespace rnnkit
