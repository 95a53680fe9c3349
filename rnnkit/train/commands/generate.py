"""``rnnkit generate CKPT --prime TEXT``: sample text from a character-level model."""
from __future__ import annotations

from .. import generate


def add_arguments(p) -> None:
    p.add_argument("checkpoint", metavar="CKPT", help="run folder or checkpoint.safetensors of a text run")
    p.add_argument("--prime", default="", help="text to start from (default: one random character)")
    p.add_argument("--length", type=int, default=200, help="characters to sample (default 200)")
    p.add_argument("--temperature", type=float, default=1.0, help="softmax temperature (default 1.0)")
    p.add_argument("--seed", type=int, default=0, help="seed of the sampling (default 0)")


def run(args) -> int:
    print(generate(args.checkpoint, args.prime, args.length, args.temperature, args.seed))
    return 0
