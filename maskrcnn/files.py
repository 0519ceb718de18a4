"""Files that readers see whole or not at all.

``write_atomically`` writes to a temporary file beside the target and renames
it into place, so a crash mid-write never leaves a half-written file under
the final name; ``remove_stale_temporaries`` clears what a killed writer left.
Used for checkpoints, results and metrics alike.
"""

from __future__ import annotations

import glob
import os
import uuid
from collections.abc import Callable
from pathlib import Path


def write_atomically(path: Path, write: Callable[[Path], object]) -> None:
    """Call ``write(tmp_path)``, then rename the temporary file to ``path``.

    The temporary file is removed on any failure, Ctrl-C included (and
    SIGTERM under the ``maskrcnn`` command, which turns it into an
    exception). Only a process killed outright (SIGKILL, power loss) leaves
    one behind; ``remove_stale_temporaries`` clears those.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    # Same directory (a rename across file systems is not atomic); a name of our own
    # rather than mkstemp's, so the file gets the usual permissions. The pid in the
    # name tells a stale file (its writer is gone) from one being written.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def remove_stale_temporaries(path: str | os.PathLike[str]) -> list[Path]:
    """Delete temporary files that interrupted writes of ``path`` left behind; returns them.

    Only files named as ``write_atomically`` names them whose writing
    process no longer runs are removed, so a write in progress elsewhere on
    this machine is left alone.
    """
    path = Path(path)
    removed = []
    for tmp in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        pid = tmp.name[len(path.name) + 2 :].split(".")[0]
        if not pid.isdigit() or (int(pid) != os.getpid() and _running(int(pid))):
            continue
        tmp.unlink(missing_ok=True)
        removed.append(tmp)
    return removed


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: another user's live process
        return True
    return True
