"""Conventions shared by the command-line tools: user errors become one message and an exit code
(2 bad usage or input, 1 failure), tracebacks stay for bugs; the code a tool runs is the code of
its own checkout.

Every tool starts with

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

so that `mmdp` and `projects` come from the checkout the tool lives in: an editable install
(`pip install -e`) maps them to the checkout it was made from, which `python tools/x.py` would
otherwise import, silently, from a copied or moved checkout.
"""
import argparse
import os
import os.path as osp
import sys
from typing import Callable, Optional

# Exit codes.
USAGE, FAILURE = 2, 1


class UsageError(ValueError):
    """Bad usage or input named by the message (exit 2)."""


class RunError(RuntimeError):
    """A run that could not do its job, for a reason the message names (exit 1)."""


def check_checkout(tool_file: str) -> None:
    """Refuse to run when `mmdp` or `projects` come from another checkout than `tool_file`'s."""
    import mmdp
    import projects
    root = osp.dirname(osp.dirname(osp.realpath(tool_file)))
    for module in (mmdp, projects):
        where = osp.realpath(osp.dirname(module.__file__))
        if osp.dirname(where) != root:
            print(f'error: {tool_file} lives in {root} but imports '
                  f'{module.__name__} from {where} (an editable install or PYTHONPATH of '
                  f'another checkout); run it with PYTHONPATH={root}, or reinstall with '
                  f'`pip install -e {root}`', file=sys.stderr)
            sys.exit(USAGE)


def check_device(device: str) -> None:
    """`--device cuda` on a machine without CUDA fails here, by name."""
    import torch  # only the tools that take --device load it here
    try:
        kind = torch.device(device).type
    except RuntimeError as e:
        raise UsageError(f'--device {device}: {e}') from None
    if kind == 'cuda' and not torch.cuda.is_available():
        raise UsageError(f'--device {device}: CUDA is not available here (torch '
                         f'{torch.__version__}); use --device cpu')


def check_writable(path: str, what: str = 'output folder') -> None:
    """Fail before any work when `path` (a folder, created if missing) cannot be written."""
    folder = path
    while folder and not osp.exists(folder):  # the first existing parent is where it is made
        folder = osp.dirname(folder)
    folder = folder or '.'
    if not osp.isdir(folder):
        raise UsageError(f'{what} {path}: {folder} is not a folder')
    if not os.access(folder, os.W_OK | os.X_OK):
        raise RunError(f'{what} {path}: {folder} is not writable')


def counts(minimum: int) -> Callable[[str], int]:
    """An argparse type: an integer of at least `minimum`."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f'{text!r} is not an integer') from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f'{value} is below the minimum {minimum}')
        return value
    parse.__name__ = f'integer >= {minimum}'
    return parse


def _message(exc: BaseException) -> str:
    if isinstance(exc, KeyError):  # str(KeyError) quotes its message
        return str(exc.args[0]) if exc.args else 'KeyError'
    if isinstance(exc, OSError) and exc.filename and exc.strerror:
        return f'{exc.filename}: {exc.strerror}'
    return str(exc)


def run(main: Callable, argv: Optional[list] = None) -> int:
    """Run a tool's `main(argv)` and return its exit code: an error a user can fix prints one
    message (stderr) and gives its code; set MMDP_TRACEBACK=1 to see the traceback anyway. A
    `main` returning an int returns that code, anything else 0."""
    try:
        result = main(argv)
    except SystemExit as e:  # argparse (message printed) or sys.exit('message'): bad usage
        if isinstance(e.code, str):
            print(e.code, file=sys.stderr)
        return e.code if isinstance(e.code, int) else USAGE
    except (ValueError, KeyError, FileNotFoundError, IsADirectoryError,
            NotADirectoryError) as e:
        code, error = USAGE, e
    except (RunError, OSError) as e:
        code, error = FAILURE, e
    else:
        return result if isinstance(result, int) and not isinstance(result, bool) else 0
    if os.environ.get('MMDP_TRACEBACK'):
        raise error
    print(f'error: {_message(error)}', file=sys.stderr)
    return code


def entry(tool_file: str, main: Callable) -> None:
    """`if __name__ == '__main__': entry(__file__, main)`."""
    check_checkout(tool_file)
    sys.exit(run(main))
