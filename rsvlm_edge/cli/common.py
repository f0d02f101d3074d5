"""What every command shares: option parsing helpers and the error contract.

The contract (``run_app``), for every command and every way of failing:

* a user error (bad option or argument, unknown command or option, missing file, bad bundle, bad
  image, unwritable output, not enough memory) prints one ``error:`` line and one ``fix:`` line on
  stderr and exits with code 2, never with a traceback;
* Ctrl-C (SIGINT) exits 130 and SIGTERM 143: the stack unwinds, so temp files are removed and no
  partial output is left (outputs are written atomically, see ``rsvlm_edge.atomic``); further
  signals while cleaning up are ignored (a third one exits at once);
* an unexpected internal error prints ``error: internal error ...`` and a ``fix:`` line and exits 1
  (set ``RSVLM_EDGE_DEBUG=1`` to see the traceback).
"""

from __future__ import annotations

import enum
import math
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import InputError, RsvlmError

EXIT_ERROR = 2
EXIT_INTERNAL = 1
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143
MEMORY_ENV = "RSVLM_EDGE_MAX_MEMORY"
DEBUG_ENV = "RSVLM_EDGE_DEBUG"


class OnError(str, enum.Enum):
    """What ``classify`` / ``embed`` do with an image that cannot be read."""

    strict = "strict"
    skip = "skip"


ON_ERROR_HELP = ("strict: stop at the first unreadable image (nothing is written); skip: leave it out, "
                 "list it with the reason in the output, and warn with a count")


def csv(s: str) -> list[str]:
    return [x.strip() for x in s.split(",") if x.strip()]


def ints(s: str, what: str = "--batch") -> list[int]:
    try:
        out = [int(x) for x in csv(s)]
    except ValueError:
        raise InputError(f"{what} '{s}' is not a comma-separated list of integers", f"e.g. {what} 1,8,32") from None
    if not out or min(out) < 1:
        raise InputError(f"{what} values must be >= 1, got '{s}'", f"e.g. {what} 1,8")
    return out


def positive(value: int | None, option: str, example: str = "1") -> None:
    """Refuse ``value < 1`` for an integer option (None means 'default')."""
    if value is not None and value < 1:
        raise InputError(f"{option} must be >= 1 (got {value})", f"e.g. {option} {example}")


def read_labels(labels: str) -> list[str]:
    """``a,b,c`` or ``@file`` (UTF-8, one label per line; blank lines of a file are ignored)."""
    if labels.startswith("@"):
        p = Path(labels[1:])
        if not p.exists():
            raise InputError(f"label file '{p}' does not exist", "check the path after '@'")
        if not p.is_file():
            raise InputError(f"label file '{p}' is not a file", "pass @FILE with one label per line")
        try:
            data = p.read_bytes()
        except OSError as e:
            raise InputError(f"label file '{p}' cannot be read ({e.strerror})", "check its permissions") from None
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as e:
            raise InputError(f"label file '{p}' is not UTF-8 text (byte {e.start})",
                             "save it as UTF-8 (e.g. iconv -f latin1 -t utf-8)") from None
        if "\x00" in text:
            raise InputError(f"label file '{p}' contains NUL bytes (binary, or UTF-16)",
                             "save it as UTF-8 text, one label per line")
        return [ln.strip() for ln in text.splitlines() if ln.strip()]
    # Inline: keep empty entries, so that 'a,,b' or 'a, ,b' is reported instead of silently dropped.
    return [x.strip() for x in labels.split(",")] if labels.strip() else []


def fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3f}" if abs(v) < 10 else f"{v:.1f}"
    return "" if v is None else str(v)


def shown(path: Any) -> str:
    """A path as text that always prints (undecodable bytes of a file name as \\x escapes)."""
    s = str(path)
    return s.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace") if _has_surrogates(s) else s


def _has_surrogates(s: str) -> bool:
    return any("\ud800" <= ch <= "\udfff" for ch in s)


# ---- memory ----

def parse_bytes(s: str) -> int:
    """'512M', '2G', '1.5GiB', '1000000' -> bytes."""
    t = s.strip().upper().removesuffix("B").removesuffix("I")
    mult = 1
    for suffix, m in (("K", 1 << 10), ("M", 1 << 20), ("G", 1 << 30), ("T", 1 << 40)):
        if t.endswith(suffix):
            t, mult = t[:-1], m
            break
    try:
        v = float(t)
    except ValueError:
        raise InputError(f"{MEMORY_ENV}='{s}' is not a size", f"e.g. {MEMORY_ENV}=4G") from None
    if not math.isfinite(v) or v <= 0:
        raise InputError(f"{MEMORY_ENV}='{s}' must be a positive size", f"e.g. {MEMORY_ENV}=4G")
    return int(v * mult)


def available_memory() -> int:
    """Bytes this process may still use: MemAvailable, the cgroup limit, and ``RSVLM_EDGE_MAX_MEMORY``
    (for a device that shares its memory with other work), whichever is smallest."""
    limits = []
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    limits.append(int(line.split()[1]) * 1024)
                    break
    except (OSError, ValueError, IndexError):
        pass
    try:
        raw = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if raw.isdigit():
            used = int(Path("/sys/fs/cgroup/memory.current").read_text().strip() or 0)
            limits.append(max(int(raw) - used, 0))
    except (OSError, ValueError):
        pass
    if not limits:
        try:
            limits.append(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (ValueError, OSError, AttributeError):
            limits.append(1 << 62)
    env = os.environ.get(MEMORY_ENV)
    if env:
        limits.append(parse_bytes(env))
    return min(limits)


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PiB"


def check_memory(need: int, what: str, fix: str) -> None:
    """Refuse work whose estimated memory exceeds 90 % of what is available (``available_memory``)."""
    avail = available_memory()
    if need > 0.9 * avail:
        raise InputError(f"{what} needs about {human_bytes(need)} of memory; {human_bytes(avail)} is available",
                         fix + (f" (or raise {MEMORY_ENV})" if os.environ.get(MEMORY_ENV) else ""))


def smaller_batch_fix(option: str, fits: int, asked: int) -> str:
    """The fix for a batch size that does not fit in memory."""
    if asked <= 1 or fits >= asked:
        return "free some memory, or use a smaller model"
    return f"use {option} {max(1, fits)} or less"


def largest_fitting(bytes_for: Callable[[int], int], upper: int = 1 << 40) -> int:
    """The largest n (>= 1) with ``bytes_for(n)`` (non-decreasing in n) within what ``check_memory``
    allows."""
    budget = 0.9 * available_memory()
    lo, hi = 1, upper
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if bytes_for(mid) <= budget:
            lo = mid
        else:
            hi = mid - 1
    return lo


# ---- sampling options (ask, caption) ----

CLI_SAMPLING_NAMES = {"temperature": "--temperature", "top_p": "--top-p", "max_new_tokens": "--max-new-tokens"}


def check_generation_options(max_new_tokens: int, temperature: float = 0.0, top_p: float = 1.0,
                             seed: int = 0) -> None:
    """Refuse bad sampling options before any model is loaded (the runtime's rules, CLI spellings)."""
    from ..models.llava.generation import check_sampling, check_seed

    check_sampling(temperature, top_p, max_new_tokens, CLI_SAMPLING_NAMES)
    check_seed(seed, "--seed")


# ---- the error contract ----

class Terminated(BaseException):
    """Raised in the main thread on SIGTERM so that cleanup (temp files) runs as for Ctrl-C."""


class _Signals:
    """SIGINT/SIGTERM handlers: the first signal raises (KeyboardInterrupt / Terminated) so that the
    stack unwinds and every temp file is removed; the next ones are ignored while that cleanup runs,
    except that a third exits at once.

    Python runs a signal handler in whatever frame the main thread is executing, and some frames
    cannot pass an exception on: a ``__del__`` or weakref finalizer, a callback from C (a Cython
    ``noexcept`` function, ctypes) report it through ``sys.unraisablehook`` and carry on, which
    would let the command run to its end. Our hook recognises the signal's own exception there and
    raises it again at the main thread's next function call after the hook (a one-shot profile
    function: ``sys.setprofile`` sees calls of C functions too); if that call is another finalizer,
    the hook runs again, until an ordinary frame takes the exception.
    A library that wraps the exception in its own (pydantic-core does, building a schema) is handled
    by ``run_app``: once a signal has arrived, any exception ends the command as that signal."""

    def __init__(self) -> None:
        self.received: int | None = None
        self.count = 0
        self.old: dict[int, Any] = {}
        self.old_unraisablehook: Callable[[Any], Any] | None = None
        self.armed: Callable[..., Any] | None = None  # the one-shot profile function, while set
        self.old_profile: Callable[..., Any] | None = None

    def install(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            prev = signal.getsignal(sig)
            if sig == signal.SIGINT and prev == signal.SIG_IGN:
                continue  # started with SIGINT ignored (nohup, background job): keep it so
            self.old[sig] = prev
            signal.signal(sig, self._handle)
        self.old_unraisablehook = sys.unraisablehook
        sys.unraisablehook = self._unraisable

    def restore(self) -> None:
        for sig, prev in self.old.items():
            signal.signal(sig, prev if prev is not None else signal.SIG_DFL)
        self.old.clear()
        if self.old_unraisablehook is not None:
            sys.unraisablehook = self.old_unraisablehook
            self.old_unraisablehook = None
        self._disarm()

    def _exception(self) -> BaseException:
        return KeyboardInterrupt() if self.received == signal.SIGINT else Terminated()

    def _handle(self, signum: int, _frame: Any) -> None:
        self.count += 1
        if self.received is None:
            self.received = signum
            raise self._exception()
        if self.count >= 3:
            os._exit(EXIT_INTERRUPTED if self.received == signal.SIGINT else EXIT_TERMINATED)

    def _unraisable(self, unraisable: Any) -> None:
        if self.received is not None and isinstance(unraisable.exc_value, (KeyboardInterrupt, Terminated)):
            self._arm()
            return
        if self.old_unraisablehook is not None:
            self.old_unraisablehook(unraisable)

    def _arm(self) -> None:
        """Raise the signal's exception at the next call the main thread makes after this hook."""
        if self.armed is not None:
            return
        own = (self._unraisable.__code__, self._arm.__code__)

        def once(frame: Any, event: str, _arg: Any) -> None:
            if event in ("call", "c_call") and frame.f_code not in own:
                self._disarm()
                raise self._exception()

        self.old_profile = sys.getprofile()
        self.armed = once
        sys.setprofile(once)

    def _disarm(self) -> None:
        if self.armed is not None:
            if sys.getprofile() is self.armed:
                sys.setprofile(self.old_profile)
            self.armed = self.old_profile = None

    @property
    def exit_code(self) -> int:
        return EXIT_INTERRUPTED if self.received in (None, signal.SIGINT) else EXIT_TERMINATED


def install_early_signal_handlers() -> None:
    """For the CLI process only, before the heavy imports: until ``run_app`` takes over, Ctrl-C exits
    130 and SIGTERM 143 at once and quietly (nothing has been written yet, so nothing needs cleaning
    up), instead of a KeyboardInterrupt traceback or a death by signal (rc -15)."""

    def early(signum: int, _frame: Any) -> None:
        what = "interrupted (Ctrl-C)" if signum == signal.SIGINT else "terminated (SIGTERM)"
        try:
            os.write(2, f"error: {what} while starting; nothing was written\n".encode())
        finally:
            os._exit(EXIT_INTERRUPTED if signum == signal.SIGINT else EXIT_TERMINATED)

    if _main_thread():
        if signal.getsignal(signal.SIGINT) != signal.SIG_IGN:
            signal.signal(signal.SIGINT, early)
        signal.signal(signal.SIGTERM, early)


def print_error(message: str, fix: str | None) -> None:
    from rich.markup import escape

    from ..progress import console

    console.print(f"[bold red]error:[/bold red] {escape(shown(message))}", highlight=False, markup=True)
    if fix:
        console.print(f"  [bold]fix:[/bold] {escape(shown(fix))}", highlight=False)


def _click_exceptions() -> dict[str, tuple[type, ...]]:
    """Exception classes of click and of the click that typer vendors (typer >= 0.29)."""
    mods = []
    for name in ("click.exceptions", "typer._click.exceptions", "typer.exceptions"):
        try:
            mods.append(__import__(name, fromlist=["x"]))
        except ImportError:
            pass
    import typer

    def grab(attr: str) -> tuple[type, ...]:
        return tuple(dict.fromkeys(getattr(m, attr) for m in mods if hasattr(m, attr)))

    return {
        "exit": grab("Exit") + (typer.Exit,),
        "abort": grab("Abort") + (typer.Abort,),
        "no_args": grab("NoArgsIsHelpError"),
        "usage": grab("UsageError"),
        "click": grab("ClickException") + grab("TyperException"),
    }


def _safe_streams() -> None:
    """Never fail on printing a file name that is not valid text (undecodable bytes in a path)."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.reconfigure(errors="backslashreplace")  # type: ignore[union-attr]
        except (AttributeError, ValueError, OSError):
            pass


def run_app(app: Callable[..., Any], argv: list[str] | None = None) -> int:
    """Run the typer ``app`` under the error contract (module docstring); returns the exit code."""
    exc = _click_exceptions()
    _safe_streams()
    signals = _Signals()
    if _main_thread():
        signals.install()
    args = sys.argv[1:] if argv is None else list(argv)
    try:
        rv = app(args=args, standalone_mode=False, prog_name="rsvlm-edge")
        if signals.received is not None:  # typer turns KeyboardInterrupt into Exit(130) and returns it
            raise KeyboardInterrupt()
        return rv if isinstance(rv, int) and not isinstance(rv, bool) else 0
    except BaseException as e:  # noqa: BLE001 - every way out is mapped to the contract's exit codes
        if signals.received is not None and not isinstance(e, SystemExit):
            # the signal came first: whatever it became on the way up (a library's wrapper of it,
            # an error of the work it cut short) the answer is the signal's
            return _report_signal(signals.exit_code)
        return _report(e, exc, signals.exit_code)
    finally:
        signals.restore()


def _report_signal(code: int) -> int:
    if code == EXIT_TERMINATED:
        print_error("terminated (SIGTERM); unfinished outputs were discarded", None)
    else:
        print_error("interrupted (Ctrl-C); unfinished outputs were discarded", None)
    return code


def _report(e: BaseException, exc: dict[str, tuple[type, ...]], signal_code: int) -> int:
    """Print the contract's message for ``e`` (raised by a command) and return the exit code."""
    if isinstance(e, RsvlmError):
        print_error(e.message, e.fix)
        return EXIT_ERROR
    if isinstance(e, (KeyboardInterrupt, Terminated, *exc["abort"])):
        return _report_signal(signal_code)
    if isinstance(e, exc["exit"]):
        return int(getattr(e, "exit_code", getattr(e, "code", 0)) or 0)
    if isinstance(e, exc["no_args"]):
        ctx = getattr(e, "ctx", None)
        if ctx is None or ctx.parent is None:  # bare `rsvlm-edge`: the help is the answer
            print(e.format_message())  # type: ignore[attr-defined]
            return 0
        print(e.format_message(), file=sys.stderr)  # type: ignore[attr-defined]
        print_error(f"{ctx.command_path}: missing command", f"see `{ctx.command_path} --help`")
        return EXIT_ERROR
    if isinstance(e, exc["usage"]):
        ctx = getattr(e, "ctx", None)
        cmd = ctx.command_path if ctx is not None else "rsvlm-edge"
        print_error(f"{cmd}: {e.format_message()}", f"see `{cmd} --help`")  # type: ignore[attr-defined]
        return EXIT_ERROR
    if isinstance(e, exc["click"]):
        print_error(e.format_message(), "see `rsvlm-edge --help`")  # type: ignore[attr-defined]
        return EXIT_ERROR
    if isinstance(e, MemoryError):
        print_error("out of memory", "lower --batch-size (or the batch sizes), or use a smaller model")
        return EXIT_ERROR
    if isinstance(e, OSError):  # an OSError no module turned into an RsvlmError: name the file
        where = f" '{shown(e.filename)}'" if e.filename else ""
        print_error(f"cannot read or write{where}: {e.strerror or e}", "check the path, its permissions and free space")
        return EXIT_ERROR
    if isinstance(e, RecursionError):
        print_error("input nested too deeply", "check the input files")
        return EXIT_ERROR
    if not isinstance(e, Exception):  # SystemExit and the like: not ours to translate
        raise e
    # a bug: still no traceback unless asked for
    if os.environ.get(DEBUG_ENV):
        import traceback

        traceback.print_exception(e)
    print_error(f"internal error ({type(e).__name__}: {str(e)[:300]})",
                f"this is a bug in rsvlm-edge; please report it with the command line ({DEBUG_ENV}=1 shows the traceback)")
    return EXIT_INTERNAL


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()

