"""The CPU kernels' thread pool (kernels/common/thread_pool.h): every index of a loop runs exactly
once on a worker index below the loop's thread count, whatever the sizes; kernels called from
several Python threads at once, and from a forked child, give the serial answers; the wait policy
comes from RSVLM_EDGE_THREAD_WAIT and a wrong value is one error:/fix: line."""

from __future__ import annotations

import multiprocessing
import subprocess
import sys
import threading

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from util import package_env

_C = pytest.importorskip("rsvlm_edge._C")


@settings(max_examples=150, deadline=None)
@given(n=st.integers(0, 5000), chunk=st.integers(-3, 700), threads=st.integers(1, 9),
       work=st.sampled_from([0, 50]))
def test_every_index_runs_once_on_a_worker_of_the_loop(n, chunk, threads, work):
    runs, worker = _C._parallel_trace(n, chunk, threads, work)
    assert runs.shape == (n,) and worker.shape == (n,)
    assert (runs == 1).all()
    assert ((worker >= 0) & (worker < threads)).all()
    if n:  # chunk < 1 counts as 1; one chunk runs on one worker
        c = max(chunk, 1)
        for start in range(0, n, c):
            assert len(set(worker[start:start + c].tolist())) == 1


def test_loops_back_to_back_and_large_ranges():
    for _ in range(200):
        runs, _ = _C._parallel_trace(97, 3, 2, 0)
        assert (runs == 1).all()
    runs, worker = _C._parallel_trace(1 << 22, 1, 4, 0)  # 4M one-index chunks
    assert (runs == 1).all() and worker.max() < 4


def test_bad_trace_arguments_are_value_errors():
    with pytest.raises(ValueError, match="n must be"):
        _C._parallel_trace(-1, 1, 2)
    with pytest.raises(ValueError, match="threads must be"):
        _C._parallel_trace(10, 1, 0)


def _gemv_case(seed: int):
    rng = np.random.default_rng(seed)
    w8 = rng.integers(-127, 128, (1537, 2048), dtype=np.int8)
    s8 = rng.random((1537, 1), dtype=np.float32) * 0.01
    w16 = rng.standard_normal((1029, 2048)).astype(np.float16)
    x = rng.standard_normal((1, 2048)).astype(np.float32)
    return w8, s8, w16, x


def test_kernels_from_several_python_threads_at_once_match_serial_results():
    cases = [_gemv_case(i) for i in range(4)]
    expected = [(_C.qlinear(x, w8, s8, None), _C.linear(x, w16, None)) for w8, s8, w16, x in cases]
    errors: list[str] = []

    def work(i: int) -> None:
        w8, s8, w16, x = cases[i]
        for _ in range(30):
            q, f = _C.qlinear(x, w8, s8, None), _C.linear(x, w16, None)
            if not (np.array_equal(q, expected[i][0]) and np.array_equal(f, expected[i][1])):
                errors.append(f"thread {i} differs")
                return

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors and not any(t.is_alive() for t in threads)


def _child_gemv(queue) -> None:  # runs in a forked child: the parent's pool workers are gone there
    from rsvlm_edge import _C as child_C

    w8, s8, _, x = _gemv_case(7)
    queue.put(child_C.qlinear(x, w8, s8, None).tobytes())


def test_a_forked_child_starts_its_own_pool():
    w8, s8, _, x = _gemv_case(7)
    expected = _C.qlinear(x, w8, s8, None)  # the parent's pool is running now
    assert _C.thread_pool_state()["workers"] >= 0
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_child_gemv, args=(queue,))
    child.start()
    got = queue.get(timeout=120)
    child.join(timeout=120)
    assert child.exitcode == 0
    assert np.frombuffer(got, np.float32).tobytes() == expected.tobytes()


@pytest.mark.parametrize("value, spinning", [("passive", False), ("spin", True), ("auto", None)])
def test_the_wait_policy_comes_from_the_environment(value, spinning, tmp_path):
    code = ("import numpy as np\nfrom rsvlm_edge import native\n"
            "native._c().linear(np.ones((1, 4096), np.float32), np.ones((512, 4096), np.float32), None)\n"
            "s = native.thread_pool_state()\nprint(s['policy'], s['spinning'])\n")
    # cwd: not the checkout, whose rsvlm_edge/ (without a built _C in CI) would shadow the installed one
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path,
                          env={**package_env(), "RSVLM_EDGE_THREAD_WAIT": value})
    assert proc.returncode == 0, proc.stderr
    policy, spin = proc.stdout.split()
    assert policy == value
    if spinning is not None:
        assert spin == str(spinning)


def test_a_wrong_wait_policy_is_a_backend_error(tmp_path):
    code = "from rsvlm_edge import native\nnative._c()\n"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path,
                          env={**package_env(), "RSVLM_EDGE_THREAD_WAIT": "busy"})
    assert proc.returncode != 0 and "RSVLM_EDGE_THREAD_WAIT='busy' is not one of auto, spin, passive" in proc.stderr


def test_a_wrong_cuda_launch_mode_is_a_backend_error(tmp_path):
    code = "from rsvlm_edge import native\nnative._c()\n"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path,
                          env={**package_env(), "RSVLM_EDGE_CUDA_PDL": "maybe"})
    assert proc.returncode != 0 and "RSVLM_EDGE_CUDA_PDL='maybe' is not one of on, off" in proc.stderr
    for value in ("on", "off"):
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path,
                              env={**package_env(), "RSVLM_EDGE_CUDA_PDL": value})
        assert proc.returncode == 0, proc.stderr



@pytest.mark.parametrize("policy", ["auto", "spin", "passive"])
def test_the_pool_is_clean_under_thread_sanitizer(policy, tmp_path_factory):
    """tests/native/thread_pool_stress.cpp with -fsanitize=thread: no data race, every index once."""
    import shutil
    from pathlib import Path

    cxx = shutil.which("g++") or shutil.which("clang++")
    if cxx is None:
        pytest.skip("no C++ compiler on PATH")
    root = Path(__file__).resolve().parents[1]
    exe = tmp_path_factory.getbasetemp() / "thread_pool_stress_tsan"
    if not exe.exists():
        build = subprocess.run([cxx, "-O1", "-g", "-std=c++17", "-fsanitize=thread", "-pthread",
                                f"-I{root / 'kernels'}", f"-I{root / 'include'}",
                                str(root / "tests" / "native" / "thread_pool_stress.cpp"),
                                str(root / "kernels" / "common" / "thread_pool.cpp"), "-o", str(exe)],
                               capture_output=True, text=True, timeout=300)
        if build.returncode != 0 and "tsan" in build.stderr.lower():
            pytest.skip(f"this compiler cannot build with ThreadSanitizer: {build.stderr[-300:]}")
        assert build.returncode == 0, build.stderr
    run = subprocess.run([str(exe)], capture_output=True, text=True, timeout=600,
                         env={"RSVLM_EDGE_THREAD_WAIT": policy, "TSAN_OPTIONS": "halt_on_error=1"})
    assert run.returncode == 0, run.stdout + run.stderr[-3000:]
    assert "WARNING: ThreadSanitizer" not in run.stderr and "0 bad" in run.stdout
