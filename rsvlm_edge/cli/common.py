"""What every command shares: option parsing helpers and the error contract (one ``error:`` line,
one ``fix:`` line, exit 2; Ctrl-C 130; SIGTERM 143; never a traceback)."""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import InputError, RsvlmError

EXIT_ERROR = 2
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143


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


def read_labels(labels: str) -> list[str]:
    """``a,b,c`` or ``@file`` (UTF-8, one label per line)."""
    if labels.startswith("@"):
        p = Path(labels[1:])
        if not p.is_file():
            raise InputError(f"label file '{p}' does not exist", "check the path after '@'")
        try:
            text = p.read_bytes().decode("utf-8-sig")
        except UnicodeDecodeError as e:
            raise InputError(f"label file '{p}' is not UTF-8 text (byte {e.start})",
                             "save it as UTF-8 (e.g. iconv -f latin1 -t utf-8)") from None
        return [ln.strip() for ln in text.splitlines() if ln.strip()]
    return csv(labels) if labels.strip() else []


def fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3f}" if abs(v) < 10 else f"{v:.1f}"
    return "" if v is None else str(v)


class Terminated(BaseException):
    """Raised in the main thread on SIGTERM so that cleanup (temp files) runs as for Ctrl-C."""


def _on_sigterm(_signum: int, _frame: Any) -> None:
    raise Terminated()


def print_error(message: str, fix: str | None) -> None:
    from ..progress import console

    console.print(f"[bold red]error:[/bold red] {message}", highlight=False, markup=True)
    if fix:
        console.print(f"  [bold]fix:[/bold] {fix}", highlight=False)


def _click_exceptions() -> tuple[dict[str, tuple[type, ...]], Any]:
    """Exception classes of click and of the click that typer vendors (typer >= 0.29)."""
    mods = []
    for name in ("click.exceptions", "typer._click.exceptions"):
        try:
            mods.append(__import__(name, fromlist=["x"]))
        except ImportError:
            pass
    import typer

    def grab(attr: str) -> tuple[type, ...]:
        return tuple(getattr(m, attr) for m in mods if hasattr(m, attr))

    return {
        "exit": grab("Exit") + (typer.Exit,),
        "abort": grab("Abort") + (typer.Abort,),
        "no_args": grab("NoArgsIsHelpError"),
        "usage": grab("UsageError"),
        "click": grab("ClickException"),
    }, typer


def run_app(app: Callable[..., Any], argv: list[str] | None = None) -> int:
    """Run the typer ``app`` under the error contract; returns the exit code."""
    exc, _ = _click_exceptions()
    old = signal.signal(signal.SIGTERM, _on_sigterm) if _main_thread() else None
    try:
        app(args=argv, standalone_mode=False, prog_name="rsvlm-edge")
        return 0
    except RsvlmError as e:
        print_error(e.message, e.fix)
        return EXIT_ERROR
    except exc["exit"] as e:  # type: ignore[misc]
        return int(getattr(e, "exit_code", getattr(e, "code", 0)) or 0)
    except exc["no_args"] as e:  # type: ignore[misc]
        print(e.format_message() if hasattr(e, "format_message") else str(e))
        return 0
    except exc["usage"] as e:  # type: ignore[misc]
        ctx = getattr(e, "ctx", None)
        cmd = ctx.command_path if ctx is not None else "rsvlm-edge"
        print_error(f"{cmd}: {e.format_message()}", f"see `{cmd} --help`")
        return EXIT_ERROR
    except exc["click"] as e:  # type: ignore[misc]
        print_error(e.format_message(), "see `rsvlm-edge --help`")
        return EXIT_ERROR
    except (KeyboardInterrupt, *exc["abort"]):
        print_error("interrupted (Ctrl-C); nothing was written", None)
        return EXIT_INTERRUPTED
    except Terminated:
        print_error("terminated (SIGTERM); nothing was written", None)
        return EXIT_TERMINATED
    except OSError as e:  # full disk, read-only directory, output path is a directory, ...
        where = f" '{e.filename}'" if e.filename else ""
        print_error(f"cannot read or write{where}: {e.strerror or e}", "check the path, its permissions and free space")
        return EXIT_ERROR
    except MemoryError:
        print_error("out of memory", "lower --batch-size (or the batch sizes), or use a smaller model")
        return EXIT_ERROR
    finally:
        if old is not None:
            signal.signal(signal.SIGTERM, old)


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def exit_with(code: int) -> None:
    sys.exit(code)
