"""The seed tutorial's examples (semantics file §9), with the values Flux prints; the
same calls appear in README.md's "Losses" section."""
from __future__ import annotations

import numpy as np
import pytest

import fluxtrain as F
from tests.util import assert_close

# Julia's Float32[0.1 0.8; 0.5 0.1; 0.4 0.1] (3 classes × 2 samples) is our (2, 3) array,
# and onehotbatch([2, 1], 1:3) is the bool (2, 3) array below.
LOGITS = [[0.1, 0.5, 0.4], [0.8, 0.1, 0.1]]
ONEHOT = [[False, True, False], [True, False, False]]


def _exact_on_numpy(backend, rtol):
    return 0 if backend.lib == "numpy" else rtol


def test_mse(backend):
    a = backend.asarray
    out = backend.call(F.mse, a([0.5, 1.8, 3.3]), a([0.6, 2.0, 3.0]))
    assert_close(out, 0.04666666666666663, rtol=_exact_on_numpy(backend, 1e-14), dtype="float64")
    out32 = backend.call(F.mse, a([0.5, 1.8, 3.3], "float32"), a([0.6, 2.0, 3.0], "float32"))
    assert_close(out32, np.float32(0.046666667), rtol=1e-6, dtype="float32")


def test_logitbinarycrossentropy(backend):
    a = backend.asarray
    out = backend.call(F.logitbinarycrossentropy, a([0.5, -1.0, 2.0]), a([1, 0, 1]))
    assert_close(out, 0.3047555609137673, rtol=1e-15, dtype="float64")
    per = backend.call(F.logitbinarycrossentropy, a([0.5, -1.0, 2.0]), a([1, 0, 1]), agg="none")
    assert_close(per, [0.4740769841801067, 0.3132616875182228, 0.1269280110429725], rtol=1e-15)
    out32 = backend.call(F.logitbinarycrossentropy, a([0.5, -1.0, 2.0], "float32"), a([1, 0, 1]))
    # Flux prints 0.3047556f0; a float32 exp can be 1 ulp away (0.30475557).
    assert_close(out32, np.float32(0.3047556), rtol=1e-6, dtype="float32")


def test_binarycrossentropy_of_sigmoid(backend):
    a = backend.asarray
    s = backend.call(F.sigmoid, a([0.5, -1.0, 2.0]))
    assert_close(s, [0.6224593312018546, 0.2689414213699951, 0.8807970779778823], rtol=1e-15)
    out = backend.call(F.binarycrossentropy, s, a([1, 0, 1]))
    assert_close(out, 0.30475556091376704, rtol=1e-15, dtype="float64")
    s32 = backend.call(F.sigmoid, a([0.5, -1.0, 2.0], "float32"))
    out32 = backend.call(F.binarycrossentropy, s32, a([1, 0, 1]))
    # eps(Float32) inside the logs shifts the 7th digit: 0.3047554f0.
    assert_close(out32, np.float32(0.3047554), rtol=1e-6, dtype="float32")


def test_logitcrossentropy(backend):
    a = backend.asarray
    out = backend.call(F.logitcrossentropy, a(LOGITS, "float32"), a(ONEHOT))
    assert_close(out, np.float32(0.81781864), rtol=1e-6, dtype="float32")
    per = backend.call(F.logitcrossentropy, a(LOGITS, "float32"), a(ONEHOT), agg="none")
    assert backend.to_numpy(per).shape == (2, 1)
    assert_close(per, np.array([[0.94591063], [0.6897267]], np.float32), rtol=2e-7 if backend.lib != "numpy" else 2e-6)
    total = backend.call(F.logitcrossentropy, a(LOGITS), a(ONEHOT), agg="sum")
    assert_close(total, 1.6356373243120303, rtol=1e-14, dtype="float64")
    ls = backend.call(F.logsoftmax, a(LOGITS, "float32"))
    assert_close(ls, np.array([[-1.3459107, -0.94591063, -1.0459106], [-0.6897267, -1.3897266, -1.3897266]], np.float32),
                 rtol=2e-7 if backend.lib != "numpy" else 2e-6)


def test_crossentropy_of_softmax(backend):
    a = backend.asarray
    sm = backend.call(F.softmax, a(LOGITS, "float32"))
    assert_close(sm, np.array([[0.26030254, 0.38832578, 0.3513717], [0.50171316, 0.24914339, 0.24914339]], np.float32),
                 rtol=3e-7)
    out = backend.call(F.crossentropy, sm, a(ONEHOT))
    assert_close(out, np.float32(0.8178184), rtol=1e-6, dtype="float32")
    out64 = backend.call(F.crossentropy, backend.call(F.softmax, a(LOGITS)), a(ONEHOT))
    assert_close(out64, 0.8178186621560146, rtol=1e-14, dtype="float64")


def test_onehotbatch_gives_the_same_target():
    onehotbatch = pytest.importorskip("fluxtrain").__dict__.get("onehotbatch")
    if onehotbatch is None:
        pytest.skip("fluxtrain.onehotbatch not available")
    np.testing.assert_array_equal(np.asarray(onehotbatch([2, 1], [1, 2, 3])), np.array(ONEHOT))


def test_readme_losses_section_prints_what_it_says():
    from pathlib import Path
    readme = Path(__file__).resolve().parents[2] / "README.md"
    if not readme.is_file():
        pytest.skip("README.md not found")
    text = readme.read_text(encoding="utf-8")
    if "## Losses" not in text:
        pytest.skip("README has no Losses section")
    block = text.split("## Losses", 1)[1].split("```python", 1)[1].split("```", 1)[0]
    env: dict = {}
    checked = 0
    for line in block.splitlines():
        code, _, comment = line.partition("#")
        code = code.strip()
        if not code:
            continue
        value = comment.split()[0] if comment.strip() else ""
        if " = " in code or code.startswith(("import", "from")):
            exec(code, env)
            continue
        try:
            float(value)
        except ValueError:
            exec(code, env)
            continue
        got = eval(code, env)
        assert str(got) == value, (code, str(got), value)
        checked += 1
    assert checked == 5
