// The cell table and the spec (rnn.h): the only place a Spec is built, and the only place the
// spec's numbers are given meaning.
//
// The spec is the int vector [cell id, act, out, reset_after] that make_spec returns to Python
// and that forward, backward, step and Stepper take back; its entries after the id are the
// options below, each a string on the Python side and a number here.
#include "rnn.h"

#include <c10/util/Exception.h>

#include <algorithm>
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

// One option of the spec: its key, its slot in the vector and its values, the first the default.
struct Option {
  const char* key;
  size_t slot;
  std::vector<Choice> choices;
};

const std::vector<Option>& options() {
  static const std::vector<Option> opts{
      {"nonlinearity", 1, {{"tanh", kTanh}, {"relu", kRelu}}},
      {"output_activation", 2, {{"identity", kIdentity}, {"tanh", kTanh}, {"sigmoid", kSigmoid}, {"softmax", kSoftmax}}},
      {"reset_after", 3, {{"1", 1}, {"0", 0}}},
  };
  return opts;
}

constexpr size_t kSpecSize = 4;

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
  for (const Option& o : options()) spec[o.slot] = o.choices[0].value;
  for (const auto& kv : given) {
    const auto& opts = options();
    const auto o = std::find_if(opts.begin(), opts.end(), [&](const Option& x) { return kv.first == x.key; });
    if (o == opts.end()) {
      std::vector<std::string> keys;
      for (const Option& x : opts) keys.emplace_back(x.key);
      TORCH_CHECK_VALUE(false, "rnnkit: option: expected one of ", quoted(keys), ", got '", kv.first, "'");
    }
    const auto c = std::find_if(o->choices.begin(), o->choices.end(),
                                [&](const Choice& x) { return kv.second == x.name; });
    TORCH_CHECK_VALUE(c != o->choices.end(), "rnnkit: ", o->key, ": expected one of ", quoted(choice_names(*o)),
                      ", got '", kv.second, "'");
    spec[o->slot] = c->value;
  }
  return spec;
}

Spec decode_spec(const std::vector<int64_t>& spec) {
  TORCH_CHECK_VALUE(spec.size() == kSpecSize, "rnnkit: spec must have ", kSpecSize, " entries, got ", spec.size());
  const std::vector<Cell>& t = cells();
  TORCH_CHECK_VALUE(spec[0] >= 0 && spec[0] < static_cast<int64_t>(t.size()), "rnnkit: spec: unknown cell id ",
                    spec[0]);
  for (const Option& o : options()) {
    const bool known = std::any_of(o.choices.begin(), o.choices.end(),
                                   [&](const Choice& c) { return c.value == spec[o.slot]; });
    TORCH_CHECK_VALUE(known, "rnnkit: spec: ", o.key, " is ", spec[o.slot], ", not a value make_spec gives");
  }
  return {&t[spec[0]], static_cast<Act>(spec[1]), static_cast<Act>(spec[2]), spec[3] != 0};
}

}  // namespace rnnkit
