"""The C and Go programs link the same library as Python: their forward logits
and seeded tokens must equal Python's, and the C error-path suite must pass
(also under valgrind). The binaries are built by `make examples`."""

import shutil
import subprocess

import numpy as np
import pytest

import pyffi
from conftest import REPO, model_dir

MODEL = model_dir("stories260K")
PROGRAMS = {
    "c": REPO / "examples" / "c" / "pyffi_example",
    "go": REPO / "examples" / "go" / "pyffi-example",
}


def run(path, *args):
    assert path.exists(), f"{path} is not built: run `make examples`"
    return subprocess.run([str(path), *map(str, args)], capture_output=True, text=True, timeout=300)


def parse(stdout):
    lines = {}
    for line in stdout.splitlines():
        key, _, rest = line.partition(" ")
        lines[key] = rest
    return lines


@pytest.fixture(scope="module")
def python_results():
    with pyffi.Transformer.from_pretrained(MODEL, n_ctx=128) as model:
        logits = model.forward([[1, 2, 3, 4, 5]], last_only=True)[0, 0]
        tokens = model.generate([1, 2, 3], max_gen_len=24, temperature=0.8, top_k=40, top_p=0.95, min_p=0.05,
                                repeat_penalty=1.1, repeat_last_n=64, seed=1234, stop_tokens=[])
        return model.vocab_size, logits, tokens


@pytest.mark.parametrize("language", sorted(PROGRAMS))
def test_example_matches_python(language, python_results):
    vocab, logits, tokens = python_results
    proc = run(PROGRAMS[language], MODEL)
    assert proc.returncode == 0, proc.stderr
    out = parse(proc.stdout)
    assert out["abi"] == str(pyffi._lib.pyffi_abi_version())
    assert int(out["vocab"]) == vocab
    np.testing.assert_array_equal(np.array(out["logits"].split(), dtype=np.float32), logits)
    assert [int(t) for t in out["tokens"].split()] == tokens
    assert [int(t) for t in out["streamed"].split()] == tokens
    assert out["finish"] == "length"
    assert out["error_check"].startswith("PYFFI_OUT_OF_RANGE ") and "vocab" in out["error_check"]


@pytest.mark.parametrize("language", sorted(PROGRAMS))
def test_example_reports_a_missing_model(language, tmp_path):
    proc = run(PROGRAMS[language], tmp_path / "missing")
    assert proc.returncode == 1
    assert "PYFFI_NOT_FOUND" in proc.stderr and "missing" in proc.stderr


def test_c_error_paths():
    proc = run(REPO / "tests" / "c" / "test_errors", model_dir("tiny-llama"), REPO / "fixtures" / "demo")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.rstrip().splitlines()[-1].endswith("passed, 0 failed")


def test_c_error_paths_under_valgrind():
    """No invalid reads or writes on any error path (leaks are not counted)."""
    valgrind = shutil.which("valgrind")
    assert valgrind, "valgrind is required (apt-get install valgrind; .ci/run installs it)"
    proc = subprocess.run([valgrind, "-q", "--error-exitcode=99", str(REPO / "tests" / "c" / "test_errors"),
                           str(model_dir("tiny-llama")), str(REPO / "fixtures" / "demo")],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.parametrize("language", sorted(PROGRAMS))
def test_example_text_path_matches_python(language):
    """Encode, generate with a streaming callback, detokenize: same text as pyffi.Llama."""
    from pyffi.__main__ import default_model
    proc = run(PROGRAMS[language], default_model())
    assert proc.returncode == 0, proc.stderr
    head, sep, completion = proc.stdout.partition("completion:\n")
    assert sep, proc.stdout[-500:]
    with pyffi.Llama(default_model(), n_ctx=128) as llm:
        assert parse(head)["prompt_ids"].split() == [str(i) for i in llm.tokenize("The Python")]
        want = llm.generate("The Python", max_new_tokens=24, temperature=0)
    assert completion == want + "\n"
