"""`python -m robocache ...`: info, selftest, compile (--check), bench, demo."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import robocache
from robocache import _kernels, _runtime, cli

ROOT = Path(__file__).resolve().parent.parent


def rc(*args, env=None, timeout=300):
    env = dict(os.environ if env is None else env, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "robocache", *args], capture_output=True,
                          text=True, cwd=ROOT, env=env, timeout=timeout)


def test_info():
    out = rc("info")
    assert out.returncode == 0, out.stderr
    lines = dict(ln.split(":", 1) for ln in out.stdout.splitlines() if ln and ln[0] != " ")
    assert lines["robocache"].strip() == robocache.__version__
    assert lines["api_version"].strip() == robocache.__api_version__
    for key in ("build_date", "git_commit", "numpy", "cupy", "torch", "cuda_driver", "nvrtc",
                "gpus", "kernel_cache_dir", "backends"):
        assert key in lines


def test_info_json():
    out = rc("info", "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["backends"]["numpy"] == "usable"


def test_selftest():
    out = rc("selftest")
    from robocache import selftest

    assert out.returncode == 0, out.stdout + out.stderr
    for check in selftest.CHECKS:
        assert f"PASS  numpy      {check.op}" in out.stdout
    assert "FAIL" not in out.stdout
    assert f"selftest: {out.stdout.count('PASS')} passed, 0 failed" in out.stdout


def test_selftest_exits_nonzero_on_a_failure():
    code = ("import sys, numpy as np\n"
            "from robocache import cli, selftest\n"
            "selftest.register('off by one', inputs=lambda rng: {'x': np.ones(3)},\n"
            "                  reference=lambda x: x)(lambda x: x + 1)\n"
            "sys.exit(cli.main(['selftest', '--backend', 'numpy']))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                         env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=300)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "FAIL  numpy      off by one" in out.stdout
    assert "PASS  numpy      fuse" in out.stdout


def test_selftest_unknown_op_is_a_usage_error():
    bad = rc("selftest", "--op", "no such op")
    assert bad.returncode != 0 and "no such op" in bad.stderr


def _need_nvrtc_bindings():
    if _runtime.nvrtc_version().startswith("unavailable"):
        pytest.skip("the NVRTC bindings are not installed (robocache[compile])")


def test_compile_check_one_arch():
    _need_nvrtc_bindings()
    out = rc("compile", "--check", "--arch", "sm_80")
    assert out.returncode == 0, out.stdout + out.stderr
    for module in _kernels.ALL_MODULES:
        line = next(ln for ln in out.stdout.splitlines() if f" {module.source} " in ln)
        assert line.startswith("OK") and "sm_80" in line and "cubin" in line
    assert f"{len(_kernels.ALL_MODULES)} passed, 0 failed" in out.stdout


def test_compile_check_reports_nvrtc_errors(monkeypatch, tmp_path, capsys):
    _need_nvrtc_bindings()
    src = tmp_path / "cuda_src"
    src.mkdir()
    (src / "broken.cu").write_text('extern "C" __global__ void k(float* x) {\n'
                                   '    x[0] = undeclared_thing;\n}\n')
    monkeypatch.setattr(_runtime, "CUDA_SRC", src)
    _runtime._code_of.cache_clear()
    monkeypatch.setattr(_kernels, "ALL_MODULES", (_runtime.KernelModule("broken.cu", ("k",)),))
    try:
        code = cli.main(["compile", "--check", "--arch", "sm_75", "-j", "1"])
    finally:
        _runtime._code_of.cache_clear()
    out = capsys.readouterr().out
    assert code == 1
    assert "FAIL  broken.cu" in out
    assert 'broken.cu(2): error: identifier "undeclared_thing" is undefined' in out
    assert "0 passed, 1 failed" in out


def test_compile_check_unknown_module():
    out = rc("compile", "--check", "--module", "nope.cu")
    assert out.returncode == 2 and "nope.cu" in out.stderr  # a usage error, as argparse's


def test_unknown_arguments_get_the_commands_usage_and_bench_forwards_help():
    out = rc("info", "--bogus")
    assert out.returncode == 2 and "usage: python -m robocache info" in out.stderr
    assert "unrecognized arguments: --bogus" in out.stderr
    out = rc("bench", "--help")  # run_all.py's own help, as documented
    assert out.returncode == 0 and "run_all.py" in out.stdout and "--quick" in out.stdout


def test_compile_warm_without_gpu():
    if _runtime.cuda_available():
        pytest.skip("a GPU is present (covered by make gpu-check)")
    out = rc("compile")
    assert out.returncode == 1
    assert "no usable GPU" in out.stderr and "--check" in out.stderr


@pytest.mark.gpu
def test_compile_warm_on_gpu():
    if not _runtime.cuda_available():
        pytest.skip("no usable CUDA device")
    out = rc("compile", timeout=900)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.count("OK    device") == len(_kernels.ALL_MODULES)


def test_bench_without_benchmarks(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(cli, "_bench_script", lambda: tmp_path / "missing" / "run_all.py")
    assert cli.main(["bench"]) == 1
    assert "sdist" in capsys.readouterr().out


def test_bench_passes_arguments_through(monkeypatch, tmp_path):
    script = tmp_path / "benchmarks" / "run_all.py"
    script.parent.mkdir()
    script.write_text("import sys, pathlib\n"
                      "pathlib.Path(sys.argv[0]).with_name('args.txt').write_text("
                      "' '.join(sys.argv[1:]))\nsys.exit(3)\n")
    monkeypatch.setattr(cli, "_bench_script", lambda: script)
    assert cli.main(["bench", "--quick", "--json", "x.json"]) == 3
    assert (script.parent / "args.txt").read_text() == "--quick --json x.json"


def test_demo(monkeypatch, capsys):
    if importlib.util.find_spec("robocache.demo") is None:
        assert cli.main(["demo"]) == 1
        assert "robocache/demo.py" in capsys.readouterr().err
    else:
        import robocache.demo as demo

        called = []
        monkeypatch.setattr(demo, "run", lambda root=None: called.append(root))
        assert cli.main(["demo"]) == 0 and called == [None]
        assert cli.main(["demo", "--root", "/data/x"]) == 0 and called[-1] == "/data/x"


def test_demo_without_its_dataset_or_torch_says_what_to_do(tmp_path, monkeypatch, capsys):
    """From an installed wheel the demo's dataset (repository / sdist only) is missing, and
    torch may be: an explanation and exit status 1, not a traceback."""
    import robocache.demo as demo

    monkeypatch.setattr(demo, "DATASET", tmp_path / "site-packages/examples/data/arm2d_reach")
    assert cli.main(["demo"]) == 1
    err = capsys.readouterr().err
    assert "not the wheel" in err and "make demo" in err and "--root DIR" in err

    def no_torch(root=None):
        raise ModuleNotFoundError("No module named 'torch'", name="torch")
    monkeypatch.setattr(demo, "run", no_torch)
    assert cli.main(["demo"]) == 1
    assert "the demo needs torch, which is not installed: pip install 'robocache[torch]'" in \
        capsys.readouterr().err

    def other(root=None):
        raise ModuleNotFoundError("No module named 'robocache.x'", name="robocache.x")
    monkeypatch.setattr(demo, "run", other)
    with pytest.raises(ModuleNotFoundError, match="robocache.x"):  # not an extra: as it was
        cli.main(["demo"])


def test_no_command_prints_help():
    out = rc()
    assert out.returncode == 2 and "selftest" in out.stdout


def test_compile_jobs_must_be_a_count(capsys):
    for bad in ("-3", "many"):
        with pytest.raises(SystemExit) as exc:
            cli.main(["compile", "--check", "--jobs", bad])
        assert exc.value.code == 2
        assert "argument -j/--jobs: expected" in capsys.readouterr().err


def test_demo_root_without_the_demos_keys_is_refused_by_name(tmp_path, capsys):
    meta = tmp_path / "other" / "meta"
    meta.mkdir(parents=True)
    (meta / "info.json").write_text('{"features": {"observation.image": {}, "action": {}}}')
    assert cli.main(["demo", "--root", str(tmp_path / "other")]) == 1
    err = capsys.readouterr().err
    assert "lacks ['observation.state', 'observation.images.top']" in err
