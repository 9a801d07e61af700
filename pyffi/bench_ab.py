"""`python -m pyffi bench ab MODEL LIB_A LIB_B`: one-token decode with two
builds of libpyffi.so on one model, the way to tell whether an engine change
made decode faster on a machine whose speed drifts.

Each round runs one fresh process per library (the order flips every round),
each process loading the model with `PYFFI_LIBRARY` set to its library, taking
one warm-up step, then `--runs` runs of `--tokens` one-token steps. A read-
bandwidth probe (bench/bwprobe.c) runs just before and just after every run,
from the process itself, so each run can be put at the memory bandwidth level
it met: this VM's bandwidth moves between two levels about 2x apart, and a
difference of a few percent between two builds is only seen level by level
(`bench.level_split`'s rule: the midpoint of the lowest and highest probe,
when they are `bench.LEVEL_GAP` apart). The report gives each library's
median time per token (and its quartiles) over all runs and at each level,
and B's over A's.

This module is also the worker (`--worker MODEL`), in a fresh interpreter.
"""

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from . import bench

PROBE_MIB, PROBE_PASSES = bench.RUN_PROBE_MIB, 3  # the bench's probe around each decode run


def worker_main(argv):
    """The worker: decode runs on MODEL with the library `PYFFI_LIBRARY`
    names, one JSON line (`AB_RUN`) per run."""
    p = argparse.ArgumentParser(prog="pyffi-bench-ab-worker")
    p.add_argument("--worker", required=True, metavar="MODEL")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", type=int, default=4)
    p.add_argument("--tokens", type=int, default=32)
    p.add_argument("--probe", default=None, help="the bwprobe executable (none: no probes)")
    a = p.parse_args(argv)
    import numpy as np
    import pyffi

    def probe():
        if a.probe is None:
            return None
        r = subprocess.run([a.probe, str(a.threads), str(PROBE_MIB), str(PROBE_PASSES)],
                           capture_output=True, text=True, timeout=120)
        return json.loads(r.stdout.strip().splitlines()[-1])["gb_per_s"] if r.returncode == 0 else None

    with pyffi.Transformer.from_pretrained(a.worker, n_threads=a.threads) as model:
        session = model.new_session(n_ctx=a.tokens + 1)
        tok = np.ones(1, np.int32)
        logits = np.empty((1, 1, model.vocab_size), np.float32)
        session.forward(tok, start_pos=0, last_only=True, out=logits)  # warm-up
        for _ in range(a.runs):
            before = probe()
            t0 = time.perf_counter()
            for pos in range(1, a.tokens + 1):
                session.forward(tok, start_pos=pos, last_only=True, out=logits)
            dt = time.perf_counter() - t0
            after = probe()
            print("AB_RUN " + json.dumps({"s_per_token": dt / a.tokens, "probes": [before, after]}), flush=True)
    return 0


def _worker(model, library, a, probe_exe):
    """One worker process; its runs, labelled later. Raises with the worker's
    last lines should it fail."""
    env = bench.worker_env()
    env["PYFFI_LIBRARY"] = str(library)
    cmd = [sys.executable, "-m", "pyffi", "bench", "ab", "--worker", str(model), "--threads", str(a.threads),
           "--runs", str(a.runs), "--tokens", str(a.tokens)] + (["--probe", str(probe_exe)] if probe_exe else [])
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=str(bench.REPO), timeout=a.timeout)
    runs = [json.loads(line[len("AB_RUN "):]) for line in r.stdout.splitlines() if line.startswith("AB_RUN ")]
    if r.returncode != 0 or len(runs) != a.runs:
        tail = " | ".join((r.stderr or r.stdout).strip().splitlines()[-5:])[-600:]
        raise RuntimeError(f"worker for {library} exited with {r.returncode}: {tail}")
    return runs


def _quartiles(xs):
    if len(xs) < 2:
        return xs[0], xs[0]
    q = statistics.quantiles(xs, n=4, method="inclusive")
    return q[0], q[2]


def summarize(runs):
    """`runs`: [{"library": "a" or "b", "s_per_token", "probes": [before,
    after]}]. Per level ("all", and "slow" and "fast" where the probes show
    two levels and both libraries have runs there): each library's run
    count, median and quartiles in ms per token, and B's median over A's."""
    split = bench.split_of([x for r in runs for x in r["probes"]])
    levels = {}
    for level in ("all", "slow", "fast"):
        per = {lib: [1e3 * r["s_per_token"] for r in runs if r["library"] == lib
                     and (level == "all" or bench.run_level(r["probes"], split) == level)] for lib in ("a", "b")}
        if not all(per.values()):
            continue
        levels[level] = {lib: {"runs": len(ms), "median_ms": statistics.median(ms),
                               "quartiles_ms": list(_quartiles(sorted(ms)))} for lib, ms in per.items()}
        levels[level]["b_over_a"] = levels[level]["b"]["median_ms"] / levels[level]["a"]["median_ms"]
    return {"split_gb_per_s": split, "levels": levels}


def format_summary(report):
    s = report["summary"]
    lines = [f"decode, one-token steps ({report['tokens']} a run) on {report['model']}, {report['threads']} threads",
             f"A: {report['library_a']}", f"B: {report['library_b']}"]
    if s["split_gb_per_s"] is not None:
        lines.append(f"bandwidth levels split at {s['split_gb_per_s']:.0f} GB/s (a run counts at a level "
                     "when the probes just before and after it both read on that side)")
    elif report["probe"]:
        lines.append("one bandwidth level (every probe within "
                     f"{bench.LEVEL_GAP}x of the others): all runs together")
    lines.append("")
    lines.append("| runs | A ms/token (runs; quartiles) | B ms/token (runs; quartiles) | B / A |")
    lines.append("|---|---:|---:|---:|")
    for level, v in s["levels"].items():
        cell = lambda x: f"{x['median_ms']:.2f} ({x['runs']}; {x['quartiles_ms'][0]:.2f}-{x['quartiles_ms'][1]:.2f})"
        lines.append(f"| {level} | {cell(v['a'])} | {cell(v['b'])} | {v['b_over_a']:.3f} |")
    lines.append("")
    lines.append("B / A: B's median time per token over A's (below 1: B decodes faster).")
    return "\n".join(lines)


def _model(name, a):
    """A GGUF path, or a bench model type made (or found) in the bench cache."""
    if name in bench.TYPES:
        return bench.ensure_model(bench.FULL_SHAPE, name, a.threads, bench.cache_dir(), not a.no_install)
    path = Path(name)
    if not path.exists():
        raise FileNotFoundError(f"no model at {path} (give a GGUF file or one of {', '.join(bench.TYPES)})")
    return path


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--worker" in argv:
        return worker_main(argv)
    p = argparse.ArgumentParser(
        prog="pyffi bench ab",
        description="One-token decode with two builds of libpyffi.so on one model, processes taking turns, "
                    "each run between two read-bandwidth probes; medians by bandwidth level.")
    p.add_argument("model", help=f"a GGUF file or Hugging Face model folder, or a bench model type "
                                 f"({', '.join(bench.TYPES)}) at {bench.FULL_SHAPE}'s shape")
    p.add_argument("library_a", help="libpyffi.so of build A (e.g. a build of the commit before a change)")
    p.add_argument("library_b", help="libpyffi.so of build B")
    p.add_argument("--rounds", type=int, default=8, help="rounds of one process per library (default 8)")
    p.add_argument("--runs", type=int, default=4, help="timed runs per process, after one warm-up step (default 4)")
    p.add_argument("--tokens", type=int, default=32, help="one-token steps per run (default 32)")
    p.add_argument("--threads", type=int, default=2, help="threads (default 2)")
    p.add_argument("--no-probe", action="store_true", help="no bandwidth probes (no levels)")
    p.add_argument("--no-install", action="store_true", help="don't pip-install what a bench model needs")
    p.add_argument("--timeout", type=float, default=600, help="seconds per process (default 600)")
    p.add_argument("--json", default=None, metavar="PATH", help="also write every run and the summary to PATH")
    a = p.parse_args(argv)
    for name in ("rounds", "runs", "tokens", "threads"):
        if getattr(a, name) < 1:
            p.error(f"--{name} must be at least 1")
    libs = {"a": Path(a.library_a).resolve(), "b": Path(a.library_b).resolve()}
    for key, lib in libs.items():
        if not lib.is_file():
            p.error(f"library {key.upper()}: no file at {lib}")
    try:
        model = _model(a.model, a)
    except (OSError, RuntimeError) as e:
        p.error(str(e))
    probe_exe = None
    if not a.no_probe:
        src = bench.REPO / "bench" / "bwprobe.c"
        try:
            probe_exe = bench.compile_c(src, bench.cache_dir() / "bin" / "bwprobe")
        except (OSError, RuntimeError) as e:
            p.error(f"building the bandwidth probe: {e} (--no-probe runs without it)")
    runs = []
    for r in range(a.rounds):
        for key in ("a", "b") if r % 2 == 0 else ("b", "a"):
            try:
                got = _worker(model, libs[key], a, probe_exe)
            except (RuntimeError, subprocess.TimeoutExpired) as e:
                print(f"pyffi bench ab: error: {e}", file=sys.stderr)
                return 1
            runs += [{"library": key, "round": r, **run} for run in got]
            ms = statistics.median(1e3 * x["s_per_token"] for x in got)
            bench.log(f"round {r + 1}/{a.rounds}, {key.upper()}: {ms:.2f} ms/token")
    report = {"model": str(model), "library_a": str(libs["a"]), "library_b": str(libs["b"]),
              "threads": a.threads, "tokens": a.tokens, "probe": probe_exe is not None,
              "runs": runs, "summary": summarize(runs)}
    print(format_summary(report))
    if a.json:
        Path(a.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0
