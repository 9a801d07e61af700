"""Where a decode step's time goes: `python -m pyffi profile [MODEL]`.

Runs single-token forward passes on one session with profiling on
(`Session.set_profiling`) and splits the calling thread's time per token
into its parallel jobs (its share of each matmul and of the attention,
and its wait for the other threads at each job's end) and the work it
does alone between jobs (norms, rotary embedding, the KV store, quantizing
the next matmul's input), while the other threads read the next weights
ahead. `make bench` reports the same shares for its decode runs
(`shares`); speed against llama.cpp is its business, not this one's.
"""

import json

import numpy as np


def profile_decode(model_path, tokens=128, depth=0, threads=None, seed=1):
    """Profile `tokens` single-token steps after a `depth`-token prompt (and
    one untimed warm-up step). Returns the session's counts plus the run's
    facts."""
    import pyffi

    if tokens < 1 or depth < 0:
        raise ValueError(f"need tokens >= 1 and depth >= 0, got {tokens} and {depth}")
    n_ctx = depth + tokens + 1
    with pyffi.Transformer.from_pretrained(model_path, n_ctx=n_ctx, n_threads=threads) as model:
        session = model.new_session(n_ctx=n_ctx, n_threads=threads)
        ids = np.random.default_rng(seed).integers(3, model.vocab_size, size=n_ctx).astype(np.int32)
        if depth:
            session.forward(ids[:depth], 0, last_only=True)
        one = np.zeros(1, np.int32)
        out = np.empty((1, 1, model.vocab_size), np.float32)
        one[0] = ids[depth]
        session.forward(one, start_pos=depth, last_only=True, out=out)
        session.set_profiling(True)
        session.take_profile()  # from zero
        for i in range(depth + 1, depth + 1 + tokens):
            one[0] = ids[i]
            session.forward(one, start_pos=i, last_only=True, out=out)
        counts = session.take_profile()
        session.set_profiling(False)
        session.close()
    # `tokens` in the counts is what the engine counted: the steps.
    return dict(model=str(model_path), threads=threads, depth=depth, **counts)


def shares(p):
    """Of a profile's forward time: the calling thread's share alone between
    jobs, of it quantizing, and of its waits at the jobs' ends (None when no
    time was counted)."""
    total = p.get("forward_ns")
    if not total:
        return {"alone": None, "quantize": None, "wait": None}
    return {"alone": max(total - p["job_ns"], 0) / total, "quantize": p["quantize_ns"] / total,
            "wait": p["wait_ns"] / total}


def format_profile(p):
    """The counts of `profile_decode` per token, as lines of text."""
    n = max(p["tokens"], 1)
    per = {k: p[k] / n for k in ("forward_ns", "job_ns", "wait_ns", "quantize_ns", "jobs",
                                 "read_ahead_bytes")}
    total = max(per["forward_ns"], 1)
    share = shares(p)

    def ms(ns, of):
        return f"{ns / 1e6:.2f} ms ({100 * (of or 0):.1f}%)"

    return [
        f"profile: {p['model']}, {p['tokens']} single-token steps after {p['depth']} positions",
        f"per token: {per['forward_ns'] / 1e6:.2f} ms ({1e9 / total:.1f} tokens/s)",
        f"  in {per['jobs']:.1f} parallel jobs: {ms(per['job_ns'], per['job_ns'] / total)}",
        f"    of which waiting for the other threads: {ms(per['wait_ns'], share['wait'])}",
        f"  the calling thread alone between jobs: "
        f"{ms(max(per['forward_ns'] - per['job_ns'], 0), share['alone'])}",
        f"    of which quantizing matmul inputs: {ms(per['quantize_ns'], share['quantize'])}",
        f"  read ahead by the other threads meanwhile: {per['read_ahead_bytes'] / 2**20:.2f} MiB",
    ]


def main(args):
    """`python -m pyffi profile` (arguments parsed by pyffi.__main__)."""
    p = profile_decode(args.model, tokens=args.tokens, depth=args.depth, threads=args.threads)
    if args.json:
        print(json.dumps(p))
    else:
        print("\n".join(format_profile(p)))
    return 0
