"""Command line: `python -m pyffi generate "The Python"` (also the `pyffi`
script): text in, text out, on the bundled demo model unless --model is given.
`python -m pyffi quantize SRC DST --type q4_0` writes a quantized GGUF file.
`python -m pyffi bench` runs the benchmark against llama.cpp (pyffi/bench.py).
`python -m pyffi profile [MODEL]` shows where a decode step's time goes
(pyffi/profile.py)."""

import argparse
import sys
from pathlib import Path

_PKG = Path(__file__).resolve().parent


def default_model():
    """The demo model bundled with the package (or with a source checkout)."""
    for p in (_PKG / "demo", _PKG.parent / "fixtures" / "demo"):
        if (p / "config.json").exists():
            return p
    return None


def _ids(text):
    try:
        return [int(t) for t in text.replace(",", " ").split()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected token ids like '0 555 459', got {text!r}")


def main(argv=None):
    parser = argparse.ArgumentParser(prog="pyffi", description="pyffi: Llama-family inference on the CPU")
    sub = parser.add_subparsers(dest="command", required=True)
    g = sub.add_parser("generate", help="generate text after a prompt")
    g.add_argument("prompt", nargs="?", default="", help="the prompt text (default: empty, start from BOS)")
    g.add_argument("--ids", type=_ids, default=None,
                   help="a prompt of token ids instead of text, e.g. '0 555 459'; prints token ids")
    g.add_argument("--model", default=None, help="Hugging Face model folder (default: the bundled demo model)")
    g.add_argument("--max-new-tokens", type=int, default=32)
    g.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    g.add_argument("--top-k", type=int, default=None)
    g.add_argument("--top-p", type=float, default=None)
    g.add_argument("--min-p", type=float, default=None)
    g.add_argument("--repeat-penalty", type=float, default=1.0)
    g.add_argument("--seed", type=int, default=None)
    g.add_argument("--threads", type=int, default=None)
    g.add_argument("--stop", action="append", default=None, help="a stop string (repeatable)")
    q = sub.add_parser("quantize", help="write a GGUF file with quantized weights")
    q.add_argument("src", help="a Hugging Face model folder or a GGUF file")
    q.add_argument("dst", help="the GGUF file to write")
    q.add_argument("--type", dest="qtype", default="q8_0",
                   choices=["f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "q4_k", "q5_k", "q6_k"],
                   help="weight format (default q8_0; norms stay f32, 4/5-bit types use Q6_K for the output)")
    q.add_argument("--no-progress", action="store_true", help="no progress bar")
    p = sub.add_parser("profile", help="where a decode step's time goes (calling thread: jobs, waits, work alone)")
    p.add_argument("model", nargs="?", default=None,
                   help="a GGUF file or Hugging Face model folder (default: the bundled demo model)")
    p.add_argument("--tokens", type=int, default=128, help="single-token steps to profile (default 128)")
    p.add_argument("--depth", type=int, default=0, help="positions in the cache before them (default 0)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", action="store_true", help="the counts as one JSON line")
    sub.add_parser("bench", add_help=False,
                   help="speed against llama.cpp on generated GGUF models (see `pyffi bench --help`)")
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:
        from . import bench
        return bench.main(argv[1:])
    args = parser.parse_args(argv)

    import pyffi

    if args.command == "profile":
        from . import profile
        args.model = args.model or default_model()
        if args.model is None:
            parser.error("no model given and the demo model is not installed")
        try:
            return profile.main(args)
        except (pyffi.PyffiError, OSError, ValueError) as e:
            print(f"pyffi: error: {e}", file=sys.stderr)
            return 1

    if args.command == "quantize":
        try:
            pyffi.quantize(args.src, args.dst, args.qtype, progress=not args.no_progress)
        except (pyffi.PyffiError, OSError) as e:
            print(f"pyffi: error: {e}", file=sys.stderr)
            return 1
        size = Path(args.dst).stat().st_size
        print(f"wrote {args.dst} ({size / 2**20:.1f} MiB, {args.qtype})")
        return 0

    model_path = args.model or default_model()
    if model_path is None:
        parser.error("no --model given and the demo model is not installed")
    sampling = dict(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, min_p=args.min_p,
                    repeat_penalty=args.repeat_penalty, seed=args.seed)
    try:
        if args.ids is not None:
            with pyffi.Transformer.from_pretrained(model_path, n_threads=args.threads) as model:
                for tok in model.generate(args.ids, max_gen_len=args.max_new_tokens, stream=True, **sampling):
                    print(tok, end=" ", flush=True)
                print()
            return 0
        with pyffi.Llama(model_path, n_threads=args.threads) as llm:
            for piece in llm.generate(args.prompt, max_new_tokens=args.max_new_tokens, stop=args.stop,
                                      stream=True, **sampling):
                print(piece, end="", flush=True)
            print()
    except pyffi.PyffiError as e:
        print(f"pyffi: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
