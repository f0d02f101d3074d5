"""Trust campaign, faults (issue 7, section 4): signals, atomic outputs, failing disks and bad images.

* Ctrl-C exits 130 and SIGTERM 143, mid-run, with no partial output and no temp files left;
* ``--overwrite`` never leaves the bundle path empty, even if the writer is killed mid-swap; temp files
  and directories of a killed writer are removed by the next run that targets the same path;
* a read-only directory, a full disk (``/dev/full``, a file-size limit, a tiny tmpfs), an output
  path that is a directory: ``error:`` + ``fix:``, exit 2, nothing left behind;
* ``embed`` writes embeddings and paths as one ``.npz`` (one atomic unit, any file name);
* ``--on-error skip`` for ``classify`` and ``embed``: the default stops at the first unreadable image,
  skip continues and records each skipped file with its reason in the output.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from util import assert_contract, child_setup, flat, package_env

pytest.importorskip("torch")
pytest.importorskip("transformers")

from clip_models import save_bare, tiny_open_clip  # noqa: E402
from llava_fixtures import make_tiny_llava  # noqa: E402

import rsvlm_edge  # noqa: E402
from rsvlm_edge.bundle import BundleWriter, open_bundle  # noqa: E402
from rsvlm_edge.errors import BundleError  # noqa: E402

IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
HAS_RASTERIO = importlib.util.find_spec("rasterio") is not None
HAS_DEV_FULL = Path("/dev/full").exists()


def _can_mount() -> bool:
    """Whether this process may mount a tmpfs (root with CAP_SYS_ADMIN, outside a locked container)."""
    if not IS_ROOT or shutil.which("mount") is None:
        return False
    d = tempfile.mkdtemp()
    try:
        if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16k", "tmpfs", d], capture_output=True).returncode:
            return False
        subprocess.run(["umount", "-l", d], capture_output=True)
        return True
    finally:
        os.rmdir(d)


def _can_chattr() -> bool:
    if not IS_ROOT or shutil.which("chattr") is None:
        return False
    d = tempfile.mkdtemp()
    try:
        ok = subprocess.run(["chattr", "+i", d], capture_output=True).returncode == 0
        subprocess.run(["chattr", "-i", d], capture_output=True)
        return ok
    finally:
        os.rmdir(d)


def _can_exchange() -> bool:
    from rsvlm_edge.bundle.store import _exchange

    d = Path(tempfile.mkdtemp())
    try:
        (d / "a").mkdir()
        (d / "b").mkdir()
        return _exchange(d / "a", d / "b")
    finally:
        shutil.rmtree(d)


CAN_MOUNT = _can_mount()
CAN_MAKE_READONLY = not IS_ROOT or CAN_MOUNT or _can_chattr()
CAN_EXCHANGE = _can_exchange()


def campaign(category: str, when: bool = True):
    """The campaign mark, only where the case can run here (a case this environment must skip is not
    part of its campaign, rather than a case tried and not passed)."""
    return pytest.mark.campaign(category) if when else (lambda f: f)
SIGNALS = {"SIGINT": (signal.SIGINT, 130, "interrupted"), "SIGTERM": (signal.SIGTERM, 143, "terminated")}


# ---- helpers -------------------------------------------------------------------------------------



def cli(*args, env: dict[str, str] | None = None, fsize: int | None = None, timeout: float = 300):
    return subprocess.run([sys.executable, "-m", "rsvlm_edge.cli", *map(str, args)], capture_output=True, text=True,
                          env={**package_env(), **(env or {})}, timeout=timeout, stdin=subprocess.DEVNULL,
                          preexec_fn=child_setup(fsize))


def start(*args, env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "rsvlm_edge.cli", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**package_env(), **(env or {})},
                            stdin=subprocess.DEVNULL, preexec_fn=child_setup())


def wait_for(cond, timeout: float = 120, what: str = "condition"):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        got = cond()
        if got:
            return got
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")




def temps(directory: Path, name: str) -> list[Path]:
    """Temp files/directories of writers of ``directory/name`` ('.NAME.*')."""
    return sorted(p for p in directory.iterdir() if p.name.startswith(f".{name}."))


# ---- fixtures ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("faults_out")


@pytest.fixture(scope="module")
def ckpt(root) -> Path:
    return save_bare(tiny_open_clip(seed=7), root / "clip.pt")


@pytest.fixture(scope="module")
def clip_bundle(root, ckpt) -> Path:
    from rsvlm_edge.export.clip import export_clip

    return export_clip(ckpt, root / "clip.rsvlm", max_batch=8).path


@pytest.fixture(scope="module")
def vlm_bundle(root) -> Path:
    from rsvlm_edge.export.llava import export_vlm

    make_tiny_llava(root / "vlm_ckpt", layout="llava", fmt="safetensors")
    return export_vlm(root / "vlm_ckpt", root / "vlm.rsvlm", weights="w8").path


def _png(path: Path, seed: int, shape=(64, 80, 3)) -> Path:
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)).save(path)
    return path


@pytest.fixture(scope="module")
def img(root) -> Path:
    return _png(root / "one.png", 1)


@pytest.fixture(scope="module")
def folder(root) -> Path:
    d = root / "imgs"
    d.mkdir()
    for i in range(4):
        _png(d / f"{i}.png", 20 + i)
    return d


@pytest.fixture(scope="module")
def many(root, img) -> Path:
    """30,000 links to one image: a run long enough to be interrupted mid-way."""
    d = root / "many"
    d.mkdir()
    for i in range(30000):
        os.symlink(img, d / f"{i:05d}.png")
    return d


@pytest.fixture()
def readonly_dir(tmp_path):
    """A directory nobody (root included) can create files in: permissions for a normal user; a
    read-only tmpfs or the immutable attribute for root."""
    d = tmp_path / "ro"
    d.mkdir()
    if not IS_ROOT:
        d.chmod(0o555)
        yield d
        d.chmod(0o755)
        return
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(d)], capture_output=True).returncode == 0:
        yield d
        subprocess.run(["umount", "-l", str(d)], capture_output=True)
        return
    if shutil.which("chattr") and subprocess.run(["chattr", "+i", str(d)], capture_output=True).returncode == 0:
        yield d
        subprocess.run(["chattr", "-i", str(d)], capture_output=True)
        return
    pytest.skip("root without mount or chattr: cannot make a read-only directory")


@pytest.fixture()
def tiny_fs(tmp_path):
    """A 64 KiB tmpfs (a full disk); needs mount rights (root), else skipped."""
    d = tmp_path / "tiny"
    d.mkdir()
    if not CAN_MOUNT or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(d)],
                                       capture_output=True).returncode != 0:
        pytest.skip("needs permission to mount a tmpfs")
    yield d
    subprocess.run(["umount", "-l", str(d)], capture_output=True)


# ---- Ctrl-C and SIGTERM mid-run ------------------------------------------------------------------

def _interrupt(proc: subprocess.Popen, sig: int, ready, delay: float) -> tuple[int, str, str]:
    try:
        wait_for(lambda: ready() or proc.poll() is not None, what="the run to start")
        assert proc.poll() is None, "finished before it could be interrupted: " + proc.stderr.read()
        time.sleep(delay)
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return proc.returncode, out, err


@pytest.mark.campaign("faults")
@pytest.mark.parametrize("delay", [0.0, 0.7, 2.0])
@pytest.mark.parametrize("name", list(SIGNALS))
def test_signal_mid_embed(name, delay, clip_bundle, many, tmp_path):
    sig, code, word = SIGNALS[name]
    out = tmp_path / "e.npz"
    proc = start("embed", clip_bundle, many, "-o", out, "--batch-size", "4")
    rc, stdout, stderr = _interrupt(proc, sig, lambda: temps(tmp_path, "e.npz"), delay)
    assert rc == code, stderr
    assert word in stderr and "Traceback" not in stderr + stdout
    assert not out.exists() and temps(tmp_path, "e.npz") == []


@pytest.mark.campaign("faults")
@pytest.mark.parametrize("delay", [0.5, 2.0])
@pytest.mark.parametrize("name", list(SIGNALS))
def test_signal_mid_classify(name, delay, clip_bundle, many, tmp_path):
    sig, code, word = SIGNALS[name]
    out = tmp_path / "c.json"
    proc = start("classify", clip_bundle, many, "--labels", "forest,river", "--json", out, "--batch-size", "4")
    rc, stdout, stderr = _interrupt(proc, sig, lambda: temps(tmp_path, "c.json"), delay)
    assert rc == code, stderr
    assert word in stderr and "Traceback" not in stderr + stdout
    assert stdout == ""  # the table is printed only when every image is done
    assert not out.exists() and temps(tmp_path, "c.json") == []


@pytest.mark.campaign("faults")
@pytest.mark.parametrize("name", list(SIGNALS))
def test_signal_mid_caption(name, vlm_bundle, many, tmp_path):
    sig, code, word = SIGNALS[name]
    out = tmp_path / "caps.json"
    proc = start("caption", vlm_bundle, many, "--batch-size", "2", "--max-new-tokens", "4", "--json", out)
    rc, stdout, stderr = _interrupt(proc, sig, lambda: temps(tmp_path, "caps.json"), 1.5)
    assert rc == code, stderr
    assert word in stderr and "Traceback" not in stderr + stdout
    assert not out.exists() and temps(tmp_path, "caps.json") == []


@pytest.mark.campaign("faults")
@pytest.mark.parametrize("existing", [False, True], ids=["fresh", "overwrite"])
@pytest.mark.parametrize("name", list(SIGNALS))
def test_signal_mid_export(name, existing, ckpt, clip_bundle, tmp_path):
    sig, code, word = SIGNALS[name]
    dest = tmp_path / "x.rsvlm"
    if existing:
        shutil.copytree(clip_bundle, dest)
        before = (dest / "manifest.json").read_bytes()
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    args = ["export", "clip", ckpt, "-o", dest] + (["--overwrite"] if existing else [])
    proc = start(*args, env={"TMPDIR": str(scratch)})
    rc, stdout, stderr = _interrupt(proc, sig, lambda: temps(tmp_path, "x.rsvlm"), 0.3)
    assert rc == code, stderr
    assert word in stderr and "Traceback" not in stderr + stdout
    assert temps(tmp_path, "x.rsvlm") == [] and list(scratch.iterdir()) == []
    if existing:
        assert (dest / "manifest.json").read_bytes() == before
        open_bundle(dest)  # the old bundle, intact
    else:
        assert not dest.exists()


@pytest.mark.campaign("faults")
def test_repeated_signals_do_not_interrupt_cleanup():
    from rsvlm_edge.cli.common import _Signals

    s = _Signals()
    with pytest.raises(KeyboardInterrupt):
        s._handle(signal.SIGINT, None)
    s._handle(signal.SIGTERM, None)  # the second is ignored while the stack unwinds (a third would exit at once)
    assert s.exit_code == 130 and s.count == 2


def _signal_app(body):
    """A one-command typer app running ``body(done)``; ``done`` collects what the body finished."""
    import typer

    app = typer.Typer()
    done: list[str] = []

    @app.command()
    def work() -> None:
        body(done)
        done.append("finished")

    @app.command()
    def other() -> None:  # two commands, so that typer dispatches by name as the real CLI does
        pass

    return app, done


class _SignalsInFinalizer:
    """An object whose finalizer is running when the signal's handler runs (as a GC'd dataset's or a
    C callback's would be): Python reports an exception raised there as unraisable and goes on."""

    def __init__(self, sig: int) -> None:
        self.sig = sig

    def __del__(self) -> None:
        signal.raise_signal(self.sig)
        for _ in range(100):  # bytecode boundaries for the handler to run at, still inside __del__
            pass


@pytest.mark.campaign("faults")
@pytest.mark.parametrize("name", list(SIGNALS))
def test_signal_swallowed_by_a_finalizer_still_ends_the_command(name, capsys):
    """CI once saw Ctrl-C land in a finalizer during `index build`: the KeyboardInterrupt was printed
    as an unraisable exception (a traceback) and the build ran to its end. The signal's exception is
    now delivered again at the next ordinary frame: the command stops, quietly, with the signal's code."""
    from rsvlm_edge.cli.common import run_app

    sig, code, word = SIGNALS[name]

    def body(done):
        _SignalsInFinalizer(sig)  # dropped at once: __del__ runs here
        for i in range(10_000):
            done.append(i)

    app, done = _signal_app(body)
    previous_hook = sys.unraisablehook
    assert run_app(app, ["work"]) == code
    err = capsys.readouterr().err
    assert word in err and "Traceback" not in err and "Exception ignored" not in err
    assert "finished" not in done and len(done) < 10_000
    assert sys.unraisablehook is previous_hook and signal.getsignal(sig) is not None


@pytest.mark.campaign("faults")
@pytest.mark.parametrize("name", list(SIGNALS))
def test_signal_wrapped_by_a_library_is_still_the_signal(name, capsys):
    """CI once saw SIGTERM land while pydantic-core built a schema: it wrapped our exception in its
    own SchemaError, which read as an internal error (exit 1). Once a signal has arrived, whatever
    exception ends the command is reported as that signal."""
    from rsvlm_edge.cli.common import run_app

    sig, code, word = SIGNALS[name]

    def body(done):
        try:
            signal.raise_signal(sig)
            for _ in range(100):
                pass
        except BaseException as e:  # what a library that wraps callbacks' errors does
            raise RuntimeError(f"Error building schema: {type(e).__name__}") from e

    app, _ = _signal_app(body)
    assert run_app(app, ["work"]) == code
    err = capsys.readouterr().err
    assert word in err and "internal error" not in err and "Traceback" not in err


@pytest.mark.campaign("faults")
def test_unraisable_errors_that_are_not_signals_are_reported_as_before():
    from rsvlm_edge.cli.common import _Signals

    seen = []
    s = _Signals()
    previous = sys.unraisablehook
    sys.unraisablehook = seen.append
    try:
        s.install()
        s._unraisable(type("U", (), {"exc_value": ValueError("x")})())
        s._unraisable(type("U", (), {"exc_value": KeyboardInterrupt()})())  # no signal yet: not ours
    finally:
        s.restore()
        sys.unraisablehook = previous
    assert [type(u.exc_value) for u in seen] == [ValueError, KeyboardInterrupt] and s.armed is None


@pytest.mark.campaign("faults")
@pytest.mark.parametrize("name", list(SIGNALS))
def test_early_signal_handlers_exit_quietly(name):
    """Before run_app takes over (interpreter start, imports), a signal exits with the same codes and
    no traceback (install_early_signal_handlers, for the CLI entry point)."""
    sig, code, _ = SIGNALS[name]
    script = ("import sys, time\nfrom rsvlm_edge.cli.common import install_early_signal_handlers\n"
              "install_early_signal_handlers()\nprint('ready', flush=True)\ntime.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=package_env(), preexec_fn=child_setup())
    try:
        assert proc.stdout.readline().strip() == "ready"
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == code and "Traceback" not in err and "nothing was written" in err


# ---- --overwrite, concurrent writers' temps, stale temps -----------------------------------------

WRITER = textwrap.dedent('''
    import json, os, sys
    from pathlib import Path
    from rsvlm_edge.bundle import BundleWriter
    src, dest = Path(sys.argv[1]), Path(sys.argv[2])
    m = json.loads((src / "manifest.json").read_text())
    for k in ("format", "format_version", "created", "created_by", "files"):
        m.pop(k)
    files = [f for f in os.listdir(src) if f != "manifest.json"]
    print("ready", flush=True)
    i = 0
    while True:
        m["name"] = f"v{i}"
        with BundleWriter(dest, overwrite=True) as w:
            for f in files:
                os.link(src / f, w.path(f))
            w.commit(m)
        i += 1
''')


def _manifest_template(bundle: Path) -> dict:
    m = json.loads((bundle / "manifest.json").read_text())
    for k in ("format", "format_version", "created", "created_by", "files"):
        m.pop(k)
    return m


def _write(bundle: Path, dest: Path, name: str, overwrite: bool = True):
    m = _manifest_template(bundle)
    m["name"] = name
    with BundleWriter(dest, overwrite=overwrite) as w:
        for f in os.listdir(bundle):
            if f != "manifest.json":
                os.link(bundle / f, w.path(f))
        return w.commit(m)


def _exchange_supported(d: Path) -> bool:
    from rsvlm_edge.bundle.store import _exchange

    a, b = d / ".xa", d / ".xb"
    a.mkdir()
    b.mkdir()
    try:
        return _exchange(a, b)
    finally:
        shutil.rmtree(a)
        shutil.rmtree(b)


@campaign("faults", CAN_EXCHANGE)
@pytest.mark.parametrize("delay", [0.05, 0.15, 0.3, 0.45, 0.6, 0.8, 1.0, 1.3, 1.7, 2.2])
def test_overwrite_killed_mid_swap_never_empties_the_path(delay, clip_bundle, tmp_path):
    if not _exchange_supported(tmp_path):
        pytest.skip("this file system has no renameat2(RENAME_EXCHANGE)")
    dest = tmp_path / "live.rsvlm"
    shutil.copytree(clip_bundle, dest)
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(clip_bundle), str(dest)], stdout=subprocess.PIPE,
                            text=True, env=package_env())
    try:
        assert proc.stdout.readline().strip() == "ready"
        t0 = time.monotonic()
        while time.monotonic() - t0 < delay:  # the path is there at every moment of the swaps
            assert (dest / "manifest.json").is_file()
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    b = open_bundle(dest)  # complete and verified (sha256), whichever version it is
    assert b.manifest.name in {"clip"} | {f"v{i}" for i in range(100000)}
    from rsvlm_edge.atomic import remove_stale_temps

    remove_stale_temps(dest)  # what the next writer of the path does first
    assert temps(tmp_path, "live.rsvlm") == []
    open_bundle(dest)


@campaign("faults", CAN_EXCHANGE)
@pytest.mark.parametrize("check", ["manifest", "open_bundle"])
def test_readers_never_see_a_missing_bundle_during_overwrites(check, clip_bundle, tmp_path):
    import threading

    if not _exchange_supported(tmp_path):
        pytest.skip("this file system has no renameat2(RENAME_EXCHANGE)")
    dest = tmp_path / "x.rsvlm"
    _write(clip_bundle, dest, "v0", overwrite=False)
    stop, misses, reads = threading.Event(), [], [0]

    def reader():
        while not stop.is_set():
            try:
                if check == "manifest":
                    json.loads((dest / "manifest.json").read_text())
                else:
                    open_bundle(dest, verify=False)
                reads[0] += 1
            except FileNotFoundError as e:
                misses.append(repr(e))
            except BundleError as e:
                if "does not exist" in e.message or "no manifest" in e.message:
                    misses.append(e.message)
                reads[0] += 1  # a reader racing a swap may see a mix of versions, never nothing

    t = threading.Thread(target=reader)
    t.start()
    try:
        for i in range(1, 16):
            _write(clip_bundle, dest, f"v{i}")
    finally:
        stop.set()
        t.join()
    assert misses == [] and reads[0] > 0
    assert open_bundle(dest).manifest.name == "v15" and temps(tmp_path, "x.rsvlm") == []


@pytest.mark.campaign("faults")
def test_interrupted_two_rename_swap_is_reported_and_repaired(clip_bundle, tmp_path):
    """Where RENAME_EXCHANGE is missing, a writer killed between its two renames leaves the old bundle
    at '.NAME.<pid>.old': readers are told where it is, and the next writer puts it back."""
    dest = tmp_path / "y.rsvlm"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    old = tmp_path / f".y.rsvlm.{dead}.old"
    shutil.copytree(clip_bundle, old)
    with pytest.raises(BundleError, match="interrupted --overwrite") as e:
        open_bundle(dest)
    assert old.name in e.value.message
    with pytest.raises(BundleError, match="already exists"):
        BundleWriter(dest)  # the repair runs first: the old bundle is back, so this one refuses
    open_bundle(dest)
    assert temps(tmp_path, "y.rsvlm") == []


@pytest.mark.campaign("faults")
def test_fallback_swap_without_exchange(clip_bundle, tmp_path, monkeypatch):
    from rsvlm_edge.bundle import store

    monkeypatch.setattr(store, "_exchange", lambda a, b: False)
    dest = tmp_path / "z.rsvlm"
    _write(clip_bundle, dest, "first", overwrite=False)
    _write(clip_bundle, dest, "second")
    assert open_bundle(dest).manifest.name == "second" and temps(tmp_path, "z.rsvlm") == []


@pytest.mark.campaign("faults")
@pytest.mark.parametrize("kind", ["non-bundle-directory", "regular-file", "symlink-to-file"])
def test_overwrite_replaces_only_bundles(kind, clip_bundle, tmp_path):
    dest = tmp_path / "w.rsvlm"
    if kind == "non-bundle-directory":
        dest.mkdir()
        (dest / "thesis.tex").write_text("precious")
    elif kind == "regular-file":
        dest.write_text("precious")
    else:
        (tmp_path / "target.txt").write_text("precious")
        dest.symlink_to(tmp_path / "target.txt")
    with pytest.raises(BundleError, match="not an rsvlm bundle"):
        _write(clip_bundle, dest, "new")
    assert "precious" in (dest / "thesis.tex" if kind == "non-bundle-directory" else dest).read_text()
    assert temps(tmp_path, "w.rsvlm") == []


@pytest.mark.campaign("faults")
def test_overwrite_of_an_empty_directory_and_through_a_symlink(clip_bundle, tmp_path):
    empty = tmp_path / "e.rsvlm"
    empty.mkdir()
    assert _write(clip_bundle, empty, "into-empty").manifest.name == "into-empty"
    real = tmp_path / "real.rsvlm"
    _write(clip_bundle, real, "v1", overwrite=False)
    link = tmp_path / "link.rsvlm"
    link.symlink_to(real)
    _write(clip_bundle, link, "v2")
    assert link.is_symlink() and open_bundle(link).manifest.name == "v2" and open_bundle(real).manifest.name == "v2"


@pytest.mark.campaign("faults")
def test_cli_overwrite_refuses_a_non_bundle(ckpt, tmp_path):
    dest = tmp_path / "notes.rsvlm"
    dest.mkdir()
    (dest / "notes.txt").write_text("keep me")
    r = cli("export", "clip", ckpt, "-o", dest, "--overwrite")
    assert_contract(r, "not an rsvlm bundle")
    assert (dest / "notes.txt").read_text() == "keep me" and temps(tmp_path, "notes.rsvlm") == []


def _kill_when(proc: subprocess.Popen, ready) -> None:
    try:
        wait_for(lambda: ready() or proc.poll() is not None, what="a temp file")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


@pytest.mark.campaign("faults")
@pytest.mark.parametrize("second", ["export", "export-onto-existing"])
def test_sigkilled_export_temp_removed_by_next_run(second, ckpt, clip_bundle, tmp_path):
    dest = tmp_path / "k.rsvlm"
    if second == "export-onto-existing":
        shutil.copytree(clip_bundle, dest)
    args = ["export", "clip", ckpt, "-o", dest, "--overwrite"]
    proc = start(*args)
    _kill_when(proc, lambda: temps(tmp_path, "k.rsvlm"))
    left = temps(tmp_path, "k.rsvlm")
    assert left, "SIGKILL leaves its temp directory (nothing can clean up)"
    if second == "export":
        shutil.rmtree(dest, ignore_errors=True)
        r = cli("export", "clip", ckpt, "-o", dest)
        assert r.returncode == 0, r.stderr
        open_bundle(dest)
    else:
        r = cli("export", "clip", ckpt, "-o", dest)  # refused (exists), but it cleaned up first
        assert_contract(r, "already exists")
    assert temps(tmp_path, "k.rsvlm") == []


@pytest.mark.campaign("faults")
@pytest.mark.parametrize("cmd", ["embed", "classify"])
def test_sigkilled_output_temp_removed_by_next_run(cmd, clip_bundle, many, folder, tmp_path):
    out = tmp_path / ("e.npz" if cmd == "embed" else "c.json")
    opt = ["-o", out] if cmd == "embed" else ["--labels", "a,b", "--json", out]
    proc = start(cmd, clip_bundle, many, *opt, "--batch-size", "4")
    _kill_when(proc, lambda: temps(tmp_path, out.name))
    assert temps(tmp_path, out.name) and not out.exists()
    r = cli(cmd, clip_bundle, folder, *opt)
    assert r.returncode == 0, r.stderr
    assert out.exists() and temps(tmp_path, out.name) == []


@pytest.mark.campaign("faults")
def test_temps_of_live_writers_are_kept(clip_bundle, tmp_path):
    from rsvlm_edge.atomic import remove_stale_temps

    mine = os.getpid()  # alive: this process
    live_dir = tmp_path / f".b.rsvlm.{mine}.abc.tmp"
    live_dir.mkdir()
    live_file = tmp_path / f".o.json.{mine}.xyz.tmp"
    live_file.write_text("{")
    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True).stdout)
    stale_file = tmp_path / f".o.json.{dead}.old1.tmp"
    stale_file.write_text("{")
    unrelated = tmp_path / ".o.json.notes"
    unrelated.write_text("x")
    remove_stale_temps(tmp_path / "b.rsvlm")
    remove_stale_temps(tmp_path / "o.json")
    assert live_dir.exists() and live_file.exists() and unrelated.exists() and not stale_file.exists()


# ---- read-only directories, full disks, outputs that are directories -----------------------------

def _out_cases(clip_bundle, vlm_bundle, ckpt, img, folder, where: Path) -> dict[str, list]:
    return {
        "embed": ["embed", clip_bundle, folder, "-o", where / "e.npz"],
        "classify-json": ["classify", clip_bundle, folder, "--labels", "a,b", "--json", where / "c.json"],
        "ask-json": ["ask", vlm_bundle, img, "What?", "--max-new-tokens", "2", "--json", where / "a.json"],
        "caption-json": ["caption", vlm_bundle, img, "--max-new-tokens", "2", "--json", where / "c.json"],
        "bench-json": ["bench", clip_bundle, "--batch", "1", "--iters", "1", "--warmup", "0", "--no-peer",
                       "--json", where / "b.json"],
        "export-clip": ["export", "clip", ckpt, "-o", where / "x.rsvlm"],
        "doctor-json": ["doctor", "--json", where / "d.json"],
        "scene-geojson": ["classify-scene", clip_bundle, img, "--labels", "a,b", "--geojson", where / "t.geojson"],
    }


OUT_KINDS = ["embed", "classify-json", "ask-json", "caption-json", "bench-json", "export-clip", "doctor-json",
             "scene-geojson"]


@campaign("faults", CAN_MAKE_READONLY)
@pytest.mark.parametrize("kind", OUT_KINDS if HAS_RASTERIO else OUT_KINDS[:-1])
def test_read_only_output_directory(kind, readonly_dir, clip_bundle, vlm_bundle, ckpt, img, folder):
    if kind == "scene-geojson":
        pytest.importorskip("rasterio")
    argv = _out_cases(clip_bundle, vlm_bundle, ckpt, img, folder, readonly_dir)[kind]
    r = cli(*argv)
    assert_contract(r, str(readonly_dir))
    assert any(w in flat(r.stderr) for w in ("Read-only", "Permission denied", "Operation not permitted"))
    assert list(readonly_dir.iterdir()) == []


DEV_FULL = {
    "classify-json": ["classify", "CLIP", "DIR", "--labels", "a,b", "--json", "/dev/full"],
    "ask-json": ["ask", "VLM", "IMG", "What?", "--max-new-tokens", "2", "--json", "/dev/full"],
    "caption-json": ["caption", "VLM", "IMG", "--max-new-tokens", "2", "--json", "/dev/full"],
    "doctor-json": ["doctor", "--json", "/dev/full"],
    "bench-json": ["bench", "CLIP", "--batch", "1", "--iters", "1", "--warmup", "0", "--no-peer", "--json", "/dev/full"],
}


@campaign("faults", HAS_DEV_FULL)
@pytest.mark.parametrize("kind", list(DEV_FULL))
def test_full_disk_dev_full(kind, clip_bundle, vlm_bundle, img, folder):
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full")
    subst = {"CLIP": str(clip_bundle), "VLM": str(vlm_bundle), "IMG": str(img), "DIR": str(folder)}
    r = cli(*[subst.get(a, a) for a in DEV_FULL[kind]])
    assert_contract(r, "/dev/full", "No space left on device", "free some space")
    assert Path("/dev/full").is_char_device()  # written in place, never replaced by a file


@pytest.mark.campaign("faults")
def test_device_outputs_are_written_in_place(clip_bundle, folder):
    r = cli("classify", clip_bundle, folder, "--labels", "a,b", "--json", "/dev/null")
    assert r.returncode == 0, r.stderr
    assert Path("/dev/null").is_char_device()
    r = cli("classify", clip_bundle, folder, "--labels", "a,b", "--json", "/dev/stdout")
    assert r.returncode == 0 and '"results"' in r.stdout


FSIZE_KINDS = ["embed", "classify-json", "export-clip"]


@pytest.mark.campaign("faults")
@pytest.mark.parametrize("kind", FSIZE_KINDS)
def test_full_disk_file_size_limit(kind, clip_bundle, vlm_bundle, ckpt, img, folder, tmp_path):
    """A write that hits the file-size limit (EFBIG, as a full disk gives ENOSPC) fails cleanly."""
    argv = _out_cases(clip_bundle, vlm_bundle, ckpt, img, folder, tmp_path)[kind]
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    r = cli(*argv, fsize=1024, env={"TMPDIR": str(scratch)})
    assert_contract(r, "too large")
    assert [p.name for p in tmp_path.iterdir()] == ["scratch"]
    assert [p for p in scratch.iterdir() if p.name.startswith("tmp")] == []  # export's scratch directories


@campaign("faults", CAN_MOUNT)
@pytest.mark.parametrize("kind", ["embed", "classify-json", "export-clip"])
def test_full_disk_tiny_tmpfs(kind, tiny_fs, clip_bundle, vlm_bundle, ckpt, img, many, folder, tmp_path):
    if kind == "embed":  # enough rows that the .npz cannot fit in 64 KiB
        argv = ["embed", clip_bundle, many, "-o", tiny_fs / "e.npz"]
    else:
        argv = _out_cases(clip_bundle, vlm_bundle, ckpt, img, folder, tiny_fs)[kind]
        if kind == "classify-json":
            argv[2] = many
    r = cli(*argv)
    assert_contract(r, str(tiny_fs))
    assert list(tiny_fs.iterdir()) == []


DIR_OUTPUTS = {
    "classify-json": ["classify", "CLIP", "DIR", "--labels", "a,b", "--json", "OUTDIR"],
    "ask-json": ["ask", "VLM", "IMG", "What?", "--json", "OUTDIR"],
    "caption-json": ["caption", "VLM", "IMG", "--json", "OUTDIR"],
    "doctor-json": ["doctor", "--json", "OUTDIR"],
    "embed-output": ["embed", "CLIP", "DIR", "-o", "NPZDIR"],
    "json-parent-is-file": ["classify", "CLIP", "DIR", "--labels", "a,b", "--json", "FILECHILD"],
    "embed-parent-is-file": ["embed", "CLIP", "DIR", "-o", "FILECHILDNPZ"],
}


@pytest.mark.campaign("faults")
@pytest.mark.parametrize("kind", list(DIR_OUTPUTS))
def test_output_path_is_a_directory(kind, clip_bundle, vlm_bundle, img, folder, tmp_path):
    outdir = tmp_path / "results"
    outdir.mkdir()
    npzdir = tmp_path / "emb.npz"
    npzdir.mkdir()
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    subst = {"CLIP": str(clip_bundle), "VLM": str(vlm_bundle), "IMG": str(img), "DIR": str(folder),
             "OUTDIR": str(outdir), "NPZDIR": str(npzdir), "FILECHILD": str(plain / "c.json"),
             "FILECHILDNPZ": str(plain / "e.npz")}
    r = cli(*[subst.get(a, a) for a in DIR_OUTPUTS[kind]])
    assert_contract(r, "directory")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["emb.npz", "plain.txt", "results"]
    assert list(outdir.iterdir()) == [] and list(npzdir.iterdir()) == [] and plain.read_text() == "x"


# ---- embed: one atomic .npz ----------------------------------------------------------------------

@pytest.mark.campaign("faults")
def test_embed_npz_holds_embeddings_and_paths_together(clip_bundle, folder, tmp_path):
    out = tmp_path / "e.npz"
    r = cli("embed", clip_bundle, folder, "-o", out, "--batch-size", "3")
    assert r.returncode == 0, r.stderr
    z = np.load(out, allow_pickle=False)
    assert set(z.files) >= {"embeddings", "paths", "skipped", "skipped_reasons", "bundle"}
    files = [str(folder / f"{i}.png") for i in range(4)]
    assert z["paths"].tolist() == files and z["skipped"].tolist() == [] and str(z["bundle"]) == str(clip_bundle)
    assert z["embeddings"].dtype == np.float32 and z["embeddings"].shape == (4, 64)
    np.testing.assert_allclose(z["embeddings"], rsvlm_edge.load(clip_bundle).encode_images(files), atol=1e-6)
    assert temps(tmp_path, "e.npz") == []


@pytest.mark.campaign("faults")
@pytest.mark.parametrize("name,needle", [("e.npy", "e.npz"), ("embeddings", "embeddings.npz"), ("e.txt", "e.npz")])
def test_embed_refuses_other_formats(name, needle, clip_bundle, folder, tmp_path):
    r = cli("embed", clip_bundle, folder, "-o", tmp_path / name)
    assert_contract(r, ".npz", needle)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.campaign("faults")
def test_embed_failure_keeps_the_previous_output(clip_bundle, folder, tmp_path):
    out = tmp_path / "e.npz"
    assert cli("embed", clip_bundle, folder, "-o", out).returncode == 0
    before = out.read_bytes()
    bad = tmp_path / "bad"
    bad.mkdir()
    _png(bad / "0.png", 3)
    (bad / "1.png").write_bytes(b"\x89PNG broken")
    assert_contract(cli("embed", clip_bundle, bad, "-o", out), "1.png")
    assert out.read_bytes() == before and temps(tmp_path, "e.npz") == []


@pytest.mark.campaign("faults")
@pytest.mark.parametrize("odd", ["new\nline.png", "tab\there.png", "space .png", "ünïcødé.png", "back\\slash.png"])
def test_embed_rows_match_any_file_name(odd, clip_bundle, tmp_path):
    d = tmp_path / "odd"
    d.mkdir()
    _png(d / "a.png", 1)
    _png(d / odd, 2)
    _png(d / "z.png", 3)
    out = tmp_path / "e.npz"
    r = cli("embed", clip_bundle, d, "-o", out)
    assert r.returncode == 0, r.stderr
    z = np.load(out, allow_pickle=False)
    paths = z["paths"].tolist()
    assert sorted(paths) == sorted(str(d / n) for n in ("a.png", odd, "z.png"))
    rt = rsvlm_edge.load(clip_bundle)
    np.testing.assert_allclose(z["embeddings"], rt.encode_images(paths), atol=1e-6)  # row i is paths[i]


@pytest.mark.campaign("faults")
@pytest.mark.parametrize("cmd", ["embed", "classify"])
def test_undecodable_file_names(cmd, clip_bundle, tmp_path):
    """A file name that is not valid UTF-8 is kept exactly (os.fsencode gives the bytes back) and
    printed with escapes, never crashing the run."""
    d = tmp_path / "latin"
    d.mkdir()
    raw = os.path.join(os.fsencode(d), b"caf\xe9.png")
    Image.fromarray(np.full((64, 64, 3), 90, np.uint8)).save(os.fsdecode(raw), format="PNG")
    if cmd == "embed":
        r = cli("embed", clip_bundle, d, "-o", tmp_path / "e.npz")
        assert r.returncode == 0, r.stderr
        assert [os.fsencode(p) for p in np.load(tmp_path / "e.npz")["paths"]] == [raw]
    else:
        r = cli("classify", clip_bundle, d, "--labels", "a,b", "--json", tmp_path / "c.json")
        assert r.returncode == 0, r.stderr
        assert "caf" in r.stdout and "Traceback" not in r.stderr
        assert os.fsencode(json.loads((tmp_path / "c.json").read_text())["results"][0]["image"]) == raw


# ---- --on-error skip -----------------------------------------------------------------------------

def _png_header(width: int, height: int) -> bytes:
    ihdr = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 2, 0, 0, 0])
    chunk = b"IHDR" + ihdr
    return (b"\x89PNG\r\n\x1a\n" + len(ihdr).to_bytes(4, "big") + chunk + zlib.crc32(chunk).to_bytes(4, "big")
            + (0).to_bytes(4, "big") + b"IEND" + zlib.crc32(b"IEND").to_bytes(4, "big"))


def _bad_image(kind: str, path: Path) -> None:
    if kind == "truncated-jpeg":
        Image.fromarray(np.full((64, 64, 3), 7, np.uint8)).save(path.with_suffix(".tmp.jpg"))
        data = path.with_suffix(".tmp.jpg").read_bytes()
        path.with_suffix(".tmp.jpg").unlink()
        path.write_bytes(data[: len(data) // 3])
    elif kind == "zero-bytes":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("<html>not an image</html>")
    elif kind == "truncated-png":
        full = path.parent.parent / "full.png"
        _png(full, 9, (128, 128, 3))
        path.write_bytes(full.read_bytes()[:300])
        full.unlink()
    elif kind == "16-bit":
        Image.fromarray(np.full((64, 64), 40000, np.uint16)).save(path)
    elif kind == "bomb-header":
        path.write_bytes(_png_header(60000, 60000))
    else:
        raise ValueError(kind)


BAD_KINDS = ["truncated-jpeg", "zero-bytes", "text", "truncated-png", "16-bit", "bomb-header"]


@pytest.fixture()
def mixed(tmp_path):
    def make(kind: str) -> tuple[Path, Path]:
        d = tmp_path / "mixed"
        d.mkdir()
        for i in (0, 1, 3, 4):
            _png(d / f"{i}.png", 40 + i)
        bad = d / ("2.jpg" if kind == "truncated-jpeg" else "2.png")
        _bad_image(kind, bad)
        return d, bad
    return make


@pytest.mark.campaign("faults")
@pytest.mark.parametrize("kind", BAD_KINDS)
@pytest.mark.parametrize("cmd", ["classify", "embed"])
def test_strict_by_default_stops_at_an_unreadable_image(cmd, kind, mixed, clip_bundle, tmp_path):
    d, bad = mixed(kind)
    out = tmp_path / ("o.json" if cmd == "classify" else "o.npz")
    opt = ["--labels", "forest,river", "--json", out] if cmd == "classify" else ["-o", out]
    r = cli(cmd, clip_bundle, d, *opt)
    assert_contract(r, bad.name, "--on-error skip")
    assert not out.exists() and temps(tmp_path, out.name) == []


@pytest.mark.campaign("faults")
@pytest.mark.parametrize("kind", BAD_KINDS)
@pytest.mark.parametrize("cmd", ["classify", "embed"])
def test_on_error_skip_continues_and_records(cmd, kind, mixed, clip_bundle, tmp_path):
    d, bad = mixed(kind)
    good = [str(d / f"{i}.png") for i in (0, 1, 3, 4)]
    out = tmp_path / ("o.json" if cmd == "classify" else "o.npz")
    opt = ["--labels", "forest,river", "--json", out] if cmd == "classify" else ["-o", out]
    r = cli(cmd, clip_bundle, d, *opt, "--on-error", "skip", "--batch-size", "2")
    assert r.returncode == 0, r.stderr
    assert "1 of 5 images skipped" in flat(r.stderr) and bad.name in r.stderr
    if cmd == "classify":
        res = json.loads(out.read_text())
        assert [x["image"] for x in res["results"]] == good
        assert [s["image"] for s in res["skipped"]] == [str(bad)] and res["skipped"][0]["reason"]
        assert str(bad) not in r.stdout
    else:
        z = np.load(out, allow_pickle=False)
        assert z["paths"].tolist() == good and z["skipped"].tolist() == [str(bad)]
        assert z["skipped_reasons"][0] and z["embeddings"].shape == (4, 64)
        np.testing.assert_allclose(z["embeddings"], rsvlm_edge.load(clip_bundle).encode_images(good), atol=1e-6)


@pytest.mark.campaign("faults")
@pytest.mark.parametrize("cmd", ["classify", "embed"])
def test_on_error_skip_with_nothing_readable(cmd, clip_bundle, tmp_path):
    d = tmp_path / "allbad"
    d.mkdir()
    for i in range(3):
        (d / f"{i}.png").write_bytes(b"junk")
    out = tmp_path / ("o.json" if cmd == "classify" else "o.npz")
    opt = ["--labels", "forest,river", "--json", out] if cmd == "classify" else ["-o", out]
    assert_contract(cli(cmd, clip_bundle, d, *opt, "--on-error", "skip"), "none of the 3 images")
    assert not out.exists() and temps(tmp_path, out.name) == []
