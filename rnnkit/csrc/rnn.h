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
// the int vector that make_spec returns to Python: [cell id, act, out, reset_after].
struct Spec {
  const Cell* cell;
  Act act;              // hidden activation (Elman, Jordan)
  Act out;              // Jordan output activation
  bool reset_after;     // GRU form
};

struct FwdArgs {
  Tensor xp;            // (T, B, G*H) contiguous
  Tensor mask;          // (T, B) bool or undefined
  Tensors state0;       // (B, S_k)
  OptTensors rec;       // the cell's rec_params, None where absent
  bool save;            // keep the saved tensors (backward or trace needs them)
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
// I input size, H hidden size, GH = gates * H (fixes H), O a Jordan network's output size.
enum Sym : int { kT, kB, kL, kI, kH, kGH, kO, kNumSyms };

// A recurrent parameter: its name (the Python cell's rec_params entry, without the layer
// suffix), its sizes, and whether it may be None (a bias).
struct ParamDecl {
  const char* name;
  std::vector<Sym> dims;
  bool optional;
};

// The feature size of each saved tensor (T, B, .), for a spec (GRU's forms save different ones).
using SavedFn = std::vector<Sym> (*)(const Spec&);

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
  std::vector<Sym> states;      // each carried state's size S_k (n_states entries)
  std::vector<ParamDecl> rec;   // the rec params, in the Python cell's rec_params order
  SavedFn saved;                // the saved tensors' feature sizes
};

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
// [id, act, out, reset_after] for the cell named name; options: "nonlinearity" (tanh | relu),
// "output_activation" (identity | tanh | sigmoid | softmax), "reset_after" (1 | 0), absent ones
// take the first value.  A cell ignores the options it does not read.  An unknown name, option
// or value is a ValueError that names it, the expected values and the value received.
std::vector<int64_t> make_spec(const std::string& name, const std::map<std::string, std::string>& options);
// The Spec of such a vector (checked: a ValueError when it is not one make_spec can return).
Spec decode_spec(const std::vector<int64_t>& spec);

}  // namespace rnnkit
