"""Atomic file writes: a reader, or a run that fails half-way, never sees a half-written file."""
import json
import os
import tempfile
from typing import Callable


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path, write: Callable[[str], None]) -> None:
    """`write(tmp_path)` fills a temporary file beside `path`, which then replaces `path`.

    The file gets the usual permissions (0666 less the umask), not mkstemp's private 0600.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix='.' + os.path.basename(path), suffix='.tmp')
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_json(path, data) -> None:
    def write(tmp):
        with open(tmp, 'w') as f:
            json.dump(data, f, indent=2)
            f.write('\n')

    atomic_write(path, write)


def atomic_write_text(path, text: str) -> None:
    def write(tmp):
        with open(tmp, 'w') as f:
            f.write(text)

    atomic_write(path, write)
