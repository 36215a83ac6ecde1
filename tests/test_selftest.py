"""robocache.selftest: the registry, PASS/FAIL lines, and that a wrong op is caught."""

from __future__ import annotations

import io

import numpy as np
import pytest

from robocache import _runtime, selftest


def _run(**kw):
    buf = io.StringIO()
    results = selftest.run(file=buf, **kw)
    return results, buf.getvalue()


def test_every_check_passes_on_numpy():
    results, out = _run(backends=["numpy"])
    assert [r.op for r in results] == [c.op for c in selftest.CHECKS]
    assert all(r.ok for r in results), out
    assert out.count("PASS  numpy") == len(selftest.CHECKS)


def test_resample_and_fuse_are_registered():
    ops = {c.op for c in selftest.CHECKS}
    assert {"resample linear", "resample nearest", "resample previous", "fuse"} <= ops


def test_device_backends_skipped_with_reason_without_gpu():
    ok, why = _runtime.cuda_status()
    if ok:
        pytest.skip("a GPU is present")
    results, out = _run()
    assert {r.backend for r in results} == {"numpy"}
    assert f"SKIP  cuda       {why}" in out


@pytest.mark.parametrize("how", ["wrong values", "wrong shape", "raises", "bad reference"])
def test_a_broken_op_is_caught(monkeypatch, how):
    def inputs(rng):
        return {"x": rng.standard_normal((4, 3))}

    def reference(x):
        if how == "bad reference":
            raise ZeroDivisionError("oracle broke")
        return x * 2

    def run(x):
        if how == "raises":
            raise ValueError("op broke")
        if how == "wrong shape":
            return (x * 2)[:2]
        out = x * 2
        out[1, 2] += 1e-3
        return out

    monkeypatch.setattr(selftest, "CHECKS", [])
    selftest.register("double", inputs=inputs, reference=reference)(run)
    results, out = _run(backends=["numpy"])
    assert len(results) == 1 and not results[0].ok
    assert "FAIL  numpy      double" in out
    expect = {"wrong values": "1 of 12 elements differ; first at (1, 2)",
              "wrong shape": "shape (2, 3), expected (4, 3)",
              "raises": "ValueError: op broke",
              "bad reference": "ZeroDivisionError: oracle broke"}[how]
    assert expect in out
    monkeypatch.setattr(selftest, "run", lambda ops, backends: results)
    assert selftest.main() == 1


def test_result_in_the_wrong_library_is_caught(monkeypatch):
    monkeypatch.setattr(selftest, "CHECKS", [])
    selftest.register("listy", inputs=lambda rng: {"x": np.ones(3)},
                      reference=lambda x: x)(lambda x: x.tolist())
    results, out = _run(backends=["numpy"])
    assert not results[0].ok and "TypeError" in out


def test_duplicate_registration_is_refused(monkeypatch):
    monkeypatch.setattr(selftest, "CHECKS", list(selftest.CHECKS))
    with pytest.raises(ValueError, match="registered twice"):
        selftest.register("fuse", inputs=dict, reference=dict)(dict)


def test_unknown_names_are_refused():
    with pytest.raises(ValueError, match="ops"):
        _run(ops=["no such op"])
    with pytest.raises(ValueError, match="backends"):
        _run(backends=["tpu"])


def test_op_filter():
    results, _ = _run(ops=["fuse"], backends=["numpy"])
    assert [(r.op, r.backend, r.ok) for r in results] == [("fuse", "numpy", True)]


def test_references_are_not_trivially_equal():
    # the oracles disagree with each other on the same inputs, so each one can fail an op
    checks = {c.op: c for c in selftest.CHECKS}
    inputs = checks["resample linear"].inputs(np.random.default_rng(1))
    lin, near, prev = (np.asarray(checks[f"resample {m}"].reference(**inputs))
                       for m in ("linear", "nearest", "previous"))
    assert not np.allclose(lin, near) and not np.allclose(near, prev)


@pytest.mark.gpu
def test_every_check_passes_on_cuda():
    if not _runtime.cuda_available():
        pytest.skip("no usable CUDA device")
    results, out = _run()
    assert {"numpy", "cuda"} <= {r.backend for r in results}
    assert all(r.ok for r in results), out


def test_window_checks_on_the_cuda_path_under_the_emulator(emulated_cuda):
    """The window self-tests' device branch (tables next to the inputs, one kernel launch) equals
    their reference, with the kernel run by the CPU emulator on torch CPU tensors."""
    import torch

    from robocache import selftest as st

    for op in ("window batch", "window is_pad"):
        check = next(c for c in st.CHECKS if c.op == op)
        inputs = check.inputs(np.random.default_rng(5))
        want = np.asarray(check.reference(**inputs))
        got = check.run(**{k: torch.from_numpy(np.asarray(v)) for k, v in inputs.items()})
        assert isinstance(got, torch.Tensor)
        ok, detail = st._compare(got.numpy(), want, check.rtol, check.atol)
        assert ok, (op, detail)
    assert [launch.name for launch in emulated_cuda] == ["window_batch_kernel"] * 2
