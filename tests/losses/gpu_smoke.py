"""Device check for the losses (not collected by pytest): every loss and helper on CUDA
torch tensors (and JAX GPU arrays when JAX sees a GPU) against the NumPy result, float32
and float64, with gradients. Run: ``python tests/losses/gpu_smoke.py``; exits non-zero on a
mismatch."""
from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))

import numpy as np  # noqa: E402

import fluxtrain as F  # noqa: E402
from tests.losses.cases import CASES  # noqa: E402


DRY = "--cpu" in sys.argv  # dry run of the script itself on CPU arrays


def main() -> int:
    failures = 0
    checked = 0
    libs = []
    try:
        import torch
        if torch.cuda.is_available() or DRY:
            libs.append("torch")
            print("torch", torch.__version__, "cpu (dry run)" if DRY else torch.cuda.get_device_name(0))
        else:
            print("torch: no CUDA")
    except ImportError:
        print("torch: not installed")
    try:
        import jax
        jax.config.update("jax_enable_x64", True)
        if any(d.platform == "gpu" for d in jax.devices()) or DRY:
            libs.append("jax")
            print("jax", jax.__version__, jax.devices())
        else:
            print("jax: no GPU", jax.devices())
    except ImportError:
        print("jax: not installed")

    def to_dev(lib, a):
        if lib == "torch":
            t = torch.from_numpy(np.ascontiguousarray(a))
            return t if DRY else t.cuda()
        return jax.device_put(a, jax.devices("cpu" if DRY else "gpu")[0])

    def grad(lib, f, a, b):
        if lib == "torch":
            a = a.detach().clone().requires_grad_(True)
            f(a, b).backward()
            return a.grad.cpu().numpy()
        return np.asarray(jax.jit(jax.grad(f))(a, b))

    for lib in libs:
        for case in CASES:
            yhat, y = case.make(np.random.default_rng(0))
            for dt in ("float32", "float64"):
                a, b = yhat.astype(dt), y.astype(dt)
                ref = np.asarray(case.fn(a, b, **case.kwargs))
                A, B = to_dev(lib, a), to_dev(lib, b)
                out = case.fn(A, B, **case.kwargs)
                got = out.detach().cpu().numpy() if lib == "torch" else np.asarray(out)
                g = grad(lib, lambda p, q: case.fn(p, q, **case.kwargs), A, B)
                ok = (got.dtype == np.dtype(dt) and g.dtype == np.dtype(dt) and np.isfinite(g).all()
                      and np.allclose(got, ref, rtol=1e-5 if dt == "float32" else 1e-12))
                checked += 1
                if not ok:
                    failures += 1
                    print("FAIL", lib, case.name, dt, got, ref, got.dtype, g.dtype)
        # helpers, label smoothing, a big batch through the fast paths, onehot targets
        x = np.random.default_rng(1).normal(size=(4096, 1000)).astype(np.float32) * 30
        x[0, :3] = [np.inf, 1.0, np.inf]
        X = to_dev(lib, x)
        for name in ("softmax", "logsoftmax", "sigmoid", "logsigmoid"):
            got = getattr(F, name)(X)
            got = got.cpu().numpy() if lib == "torch" else np.asarray(got)
            ref = np.asarray(getattr(F, name)(x))
            checked += 1
            if not np.allclose(got, ref, rtol=1e-5, atol=1e-6, equal_nan=True):
                failures += 1
                print("FAIL", lib, name)
        lab = np.zeros((4096, 1000), bool)
        lab[np.arange(4096), np.random.default_rng(2).integers(0, 1000, 4096)] = True
        Lab = to_dev(lib, lab)
        F.logitcrossentropy(X[1:], Lab[1:])  # warm-up (JAX compiles each primitive once)
        t = time.perf_counter()
        for _ in range(20):
            v = F.logitcrossentropy(X[1:], Lab[1:])
        v = float(v.cpu() if lib == "torch" else v)
        dt_ms = (time.perf_counter() - t) / 20 * 1e3
        ref = float(F.logitcrossentropy(x[1:], lab[1:]))
        checked += 1
        if not np.isclose(v, ref, rtol=1e-5):
            failures += 1
            print("FAIL", lib, "logitcrossentropy big", v, ref)
        print(f"{lib}: logitcrossentropy (4095×1000 float32) {dt_ms:.3f} ms/call (eager, after warm-up, incl. sync)")
        sm = F.label_smoothing(Lab, np.float32(0.1))
        checked += 1
        if str(sm.dtype).rsplit(".", 1)[-1] != "float32":
            failures += 1
            print("FAIL", lib, "label_smoothing dtype", sm.dtype)
    print(f"gpu smoke: {checked - failures}/{checked} checks passed on {libs}")
    return 1 if failures or not libs else 0


if __name__ == "__main__":
    sys.exit(main())
