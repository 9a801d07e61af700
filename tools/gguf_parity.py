"""Print how far pyffi's logits sit from llama.cpp's (and llama.cpp's from
transformers') for every GGUF fixture: python tools/gguf_parity.py [FIXTURES]."""

import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout
import pyffi  # noqa: E402

fixtures = Path(sys.argv[1] if len(sys.argv) > 1 else
                os.environ.get("PYFFI_FIXTURES", Path(__file__).resolve().parents[2] / "shared" / "fixtures"))


def rel(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


print(f"{'file':28} {'ours~llama.cpp':>15} {'llama.cpp~HF':>13} {'argmax agree (min of 4)':>24} "
      f"{'all 141':>8} {'widest gap at a miss':>21}")
for path in sorted((fixtures / "gguf").glob("*.gguf")):
    ref = np.load(fixtures / "golden" / f"llamacpp-{path.stem}.npz")
    hf = np.load(fixtures / "golden" / f"{path.stem.rsplit('-', 1)[0]}.npz")
    try:
        model = pyffi.Transformer.from_pretrained(path)
    except pyffi.PyffiError as e:
        print(f"{path.stem:28} not loaded: {e}".replace(str(path), path.name)[:120])
        continue
    with model:
        outs = [model.forward([ref[f"input_{i}"]])[0] for i in range(4)]
    agree = min(float((o.argmax(-1) == ref[f"logits_{i}"].argmax(-1)).mean()) for i, o in enumerate(outs))
    # Over every position: how often we pick llama.cpp's token, and at a miss
    # how far apart llama.cpp's own two candidates were (of max|logit|).
    hits, total, gap = 0, 0, 0.0
    for i, o in enumerate(outs):
        theirs = ref[f"logits_{i}"]
        for a, t in zip(o, theirs):
            total += 1
            if a.argmax() == t.argmax():
                hits += 1
            else:
                gap = max(gap, float((t.max() - t[a.argmax()]) / np.abs(theirs).max()))
    print(f"{path.stem:28} {rel(outs[3], ref['logits_3']):15.2e} {rel(ref['logits_3'], hf['logits_3']):13.2e} {agree:24.3f} "
          f"{hits / total:8.3f} {gap:21.1e}")
