// The cell table and the spec (rnn.h): the only place a Spec is built, and the only place the
// spec's numbers are given meaning.
//
// The spec is the int vector [cell id, act, out, reset_after, peephole, recurrent_dropout,
// zoneout, clip_recurrent, proj_size, layer_norm] that make_spec returns to Python and that forward, backward, step and
// Stepper take back; its entries after the id are the options below, each a string on the Python
// side and a number here (the real ones as their double's bit pattern, see Spec in rnn.h).
#include "rnn.h"

#include <c10/util/Exception.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <sstream>

namespace rnnkit {
namespace {

std::vector<Cell>& table() {
  static std::vector<Cell> cells;     // a function-local static: filled by other files' static initialisers
  return cells;
}

struct Choice {
  const char* name;
  int64_t value;
};

// The range of a number option: [0, 1) (a probability), (0, inf) (a bound), or a positive integer
// below 2^31 (a size; kept as the integer itself, not as a double's bits).
enum class Real { kNone, kProbability, kPositive, kSize };

// One option of the spec: its key, its slot in the vector and its values, the first the default
// (a choice), or a real number (default 0 = off); cells: the cells that take it (empty: every
// cell; another cell given it is a ValueError, since its kernel would ignore it).
struct Option {
  const char* key;
  size_t slot;
  std::vector<Choice> choices;
  Real real = Real::kNone;
  std::vector<std::string> cells = {};
};

const std::vector<Option>& options() {
  static const std::vector<Option> opts{
      {"nonlinearity", 1, {{"tanh", kTanh}, {"relu", kRelu}}},
      {"output_activation", 2, {{"identity", kIdentity}, {"tanh", kTanh}, {"sigmoid", kSigmoid}, {"softmax", kSoftmax}}},
      {"reset_after", 3, {{"1", 1}, {"0", 0}}},
      {"peephole", 4, {{"0", 0}, {"1", 1}}, Real::kNone, {"lstm"}},
      {"recurrent_dropout", 5, {}, Real::kProbability},
      {"zoneout", 6, {}, Real::kProbability, {"elman", "lstm", "gru"}},
      {"clip_recurrent", 7, {}, Real::kPositive},
      {"proj_size", 8, {}, Real::kSize, {"lstm"}},
      {"layer_norm", 9, {{"0", 0}, {"1", 1}}, Real::kNone, {"lstm", "gru"}},
  };
  return opts;
}

constexpr size_t kSpecSize = 10;

int64_t bits_of(double x) {
  int64_t b;
  std::memcpy(&b, &x, sizeof b);
  return b;
}

double double_of(int64_t b) {
  double x;
  std::memcpy(&x, &b, sizeof x);
  return x;
}

bool in_range(Real r, double x) {
  if (r == Real::kSize) return x >= 1.0 && x < 2147483648.0 && x == std::floor(x);
  return r == Real::kProbability ? x >= 0.0 && x < 1.0 : std::isfinite(x) && x > 0.0;
}

const char* range_text(Real r) {
  return r == Real::kSize ? "a positive integer" : r == Real::kProbability ? "a number in [0, 1)" : "a positive finite number";
}

// The spec's entry of a number option: a size as itself, a real number as its double's bits.
int64_t encode(Real r, double x) { return r == Real::kSize ? static_cast<int64_t>(x) : bits_of(x); }
double decode(Real r, int64_t v) { return r == Real::kSize ? static_cast<double>(v) : double_of(v); }

// A number option's entry from its string (all of it a number, in range).
int64_t parse_real(const Option& o, const std::string& text) {
  if (o.real == Real::kSize)                                   // digits only: no "2.0", "+2", " 2"
    TORCH_CHECK_VALUE(!text.empty() && text.size() < 11 && text.find_first_not_of("0123456789") == std::string::npos,
                      "rnnkit: ", o.key, ": expected ", range_text(o.real), ", got '", text, "'");
  char* end = nullptr;
  const double x = text.empty() ? NAN : std::strtod(text.c_str(), &end);
  TORCH_CHECK_VALUE(end != nullptr && *end == '\0' && in_range(o.real, x), "rnnkit: ", o.key, ": expected ",
                    range_text(o.real), ", got '", text, "'");
  return encode(o.real, x);
}

// "'a', 'b', 'c'"
template <typename Names>
std::string quoted(const Names& names) {
  std::ostringstream s;
  const char* sep = "";
  for (const auto& n : names) s << sep << "'" << n << "'", sep = ", ";
  return s.str();
}

std::vector<std::string> choice_names(const Option& o) {
  std::vector<std::string> names;
  for (const Choice& c : o.choices) names.emplace_back(c.name);
  return names;
}

}  // namespace

CellRegistrar::CellRegistrar(const Cell& cell) { table().push_back(cell); }

void check_cells() {
  std::vector<Cell>& t = table();
  std::sort(t.begin(), t.end(), [](const Cell& x, const Cell& y) { return x.id < y.id; });
  for (size_t i = 0; i < t.size(); ++i) {
    TORCH_CHECK(t[i].id == static_cast<int64_t>(i), "rnnkit: cell ids must be 0..", t.size() - 1,
                " each once; cell '", t[i].name, "' has id ", t[i].id, " (see RNNKIT_REGISTER_CELL in rnn.h)");
    for (size_t j = 0; j < i; ++j)
      TORCH_CHECK(std::string(t[i].name) != t[j].name, "rnnkit: two cells are named '", t[i].name, "'");
    TORCH_CHECK(static_cast<int64_t>(t[i].states.size()) == t[i].n_states && t[i].saved != nullptr, "rnnkit: cell '",
                t[i].name, "' must give the size of each of its ", t[i].n_states, " states and its saved tensors");
  }
}

const std::vector<Cell>& cells() { return table(); }

std::vector<std::string> cell_names() {
  std::vector<std::string> names;
  for (const Cell& c : cells()) names.emplace_back(c.name);
  return names;
}

std::vector<int64_t> make_spec(const std::string& name, const std::map<std::string, std::string>& given) {
  const std::vector<Cell>& t = cells();
  const auto cell = std::find_if(t.begin(), t.end(), [&](const Cell& c) { return name == c.name; });
  TORCH_CHECK_VALUE(cell != t.end(), "rnnkit: cell: expected one of ", quoted(cell_names()), ", got '", name, "'");
  std::vector<int64_t> spec(kSpecSize);
  spec[0] = cell->id;
  for (const Option& o : options()) spec[o.slot] = o.real == Real::kNone ? o.choices[0].value : bits_of(0.0);
  for (const auto& kv : given) {
    const auto& opts = options();
    const auto o = std::find_if(opts.begin(), opts.end(), [&](const Option& x) { return kv.first == x.key; });
    if (o == opts.end()) {
      std::vector<std::string> keys;
      for (const Option& x : opts) keys.emplace_back(x.key);
      TORCH_CHECK_VALUE(false, "rnnkit: option: expected one of ", quoted(keys), ", got '", kv.first, "'");
    }
    if (!o->cells.empty() && std::find(o->cells.begin(), o->cells.end(), name) == o->cells.end())
      TORCH_CHECK_VALUE(false, "rnnkit: option '", o->key, "': taken by the ", quoted(o->cells), " cells, got it for '",
                        name, "'");
    if (o->real != Real::kNone) {
      spec[o->slot] = parse_real(*o, kv.second);
      continue;
    }
    const auto c = std::find_if(o->choices.begin(), o->choices.end(),
                                [&](const Choice& x) { return kv.second == x.name; });
    TORCH_CHECK_VALUE(c != o->choices.end(), "rnnkit: ", o->key, ": expected one of ", quoted(choice_names(*o)),
                      ", got '", kv.second, "'");
    spec[o->slot] = c->value;
  }
  TORCH_CHECK_VALUE(!(spec[9] != 0 && name == "gru" && spec[3] == 0),
                    "rnnkit: option 'layer_norm': taken by the GRU in torch's form (reset_after '1'), got it with "
                    "reset_after '0'");
  return spec;
}

Spec decode_spec(const std::vector<int64_t>& spec) {
  TORCH_CHECK_VALUE(spec.size() == kSpecSize, "rnnkit: spec must have ", kSpecSize, " entries, got ", spec.size());
  const std::vector<Cell>& t = cells();
  TORCH_CHECK_VALUE(spec[0] >= 0 && spec[0] < static_cast<int64_t>(t.size()), "rnnkit: spec: unknown cell id ",
                    spec[0]);
  for (const Option& o : options()) {
    const double x = decode(o.real, spec[o.slot]);
    const bool known = o.real != Real::kNone ? x == 0.0 || in_range(o.real, x)
                                             : std::any_of(o.choices.begin(), o.choices.end(),
                                                           [&](const Choice& c) { return c.value == spec[o.slot]; });
    TORCH_CHECK_VALUE(known, "rnnkit: spec: ", o.key, " is ", spec[o.slot], ", not a value make_spec gives");
    const bool taken = o.cells.empty() || spec[o.slot] == 0 ||
                       std::find(o.cells.begin(), o.cells.end(), t[spec[0]].name) != o.cells.end();
    TORCH_CHECK_VALUE(taken, "rnnkit: spec: ", o.key, " is set for the '", t[spec[0]].name, "' cell, which does not take it");
  }
  TORCH_CHECK_VALUE(!(spec[9] != 0 && std::string(t[spec[0]].name) == "gru" && spec[3] == 0),
                    "rnnkit: spec: layer_norm is set for the GRU's original form, which does not take it");
  return {&t[spec[0]], static_cast<Act>(spec[1]), static_cast<Act>(spec[2]), spec[3] != 0, spec[4] != 0,
          double_of(spec[5]), double_of(spec[6]), double_of(spec[7]), spec[8], spec[9] != 0};
}

}  // namespace rnnkit
