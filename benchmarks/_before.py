"""The package as it was before issue 13's fast path, for before/after rows.

``load()`` extracts ``flask_perfwatch/`` at :data:`BEFORE` from this checkout's
git history into a temporary directory, renamed ``flask_perfwatch_before``
(every mention of the package name in it too, so that its engine and store
registries load its own classes), and imports it beside the current package.
It returns None, saying why, where that cannot be done (no git, no history).
"""

from __future__ import annotations

import functools
import importlib
import io
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from types import ModuleType

#: The last commit before the fast path: the engine was started and stopped,
#: and ``start_response`` wrapped, on every request.
BEFORE = "ba3c4a6"
NAME = "flask_perfwatch_before"


#: The last commit of issue 13 (before issue 14's per-endpoint statistics).
ISSUE_13 = "cc47151"


@functools.cache
def load(rev: str = BEFORE, name: str = NAME) -> ModuleType | None:
    root = Path(__file__).resolve().parent.parent
    try:
        archive = subprocess.run(["git", "-C", str(root), "archive", rev, "flask_perfwatch"],
                                 capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        print(f"(no 'before' rows: cannot read {rev} from git: {exc})", file=sys.stderr)
        return None
    where = Path(tempfile.mkdtemp(prefix="perfwatch-before-"))
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(where, filter="data")
    package = where / name
    shutil.move(where / "flask_perfwatch", package)
    for path in package.rglob("*.py"):
        path.write_text(path.read_text().replace("flask_perfwatch", name))
    sys.path.insert(0, str(where))
    return importlib.import_module(name)
