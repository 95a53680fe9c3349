"""``rnnkit export RUN --onnx FILE``: a trained run's network (recurrent layer and read-out) as ONNX.

The network is rebuilt from the run's checkpoint (its config, its task as saved, the
best-validation weights) and written by ``rnnkit.export_onnx`` with the head and read-out the
trainer used; see rnnkit/export.py for the graph's inputs and outputs.
"""
from __future__ import annotations

from .export import export_onnx
from .train.errors import UserError
from .train.infer import load_net


def add_arguments(p) -> None:
    p.add_argument("run", metavar="RUN", help="run folder or checkpoint.safetensors")
    p.add_argument("--onnx", required=True, metavar="FILE", help="write the ONNX model here (atomically)")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (default 17)")
    p.add_argument("--lengths", action="store_true", help="add a 'lengths' input (B,): valid steps per sequence")
    p.add_argument("--no-initial-state", dest="initial_state", action="store_false",
                   help="start from zeros instead of taking the initial state as inputs")


def run(args) -> int:
    net = load_net(args.run)
    try:
        proto = export_onnx(net.rnn, args.onnx, opset=args.opset, lengths=args.lengths,
                            initial_state=args.initial_state, head=net.head, readout=net.readout,
                            tokens=net.tokens)
    except (TypeError, ValueError, ImportError, OSError) as e:
        raise UserError(f"--onnx {args.onnx}: {e}") from None
    names = lambda values: ", ".join(v.name for v in values)  # noqa: E731
    print(f"wrote {args.onnx} (inputs: {names(proto.graph.input)}; outputs: {names(proto.graph.output)})")
    return 0
