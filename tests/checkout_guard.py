"""The suite leaves the checkout as it found it: every test runs in a temporary working folder, and at the end of
the session the checkout is compared with what it held at the start, ignored files included: nothing new, nothing
removed, no file changed (size or modification time).

Only Python's own bytecode caches (``__pycache__``) are exempt: importing the package writes them, as running
``train.py`` does.
"""
import os
from pathlib import Path
from typing import Dict, Tuple

EXEMPT_DIRS = (".git", "__pycache__")


def checkout_entries(root: Path) -> Dict[str, Tuple[int, int]]:
    """Every file, folder and link under ``root`` (relative paths), but for ``.git`` and ``__pycache__``, with
    (size, modification time in ns) for files and (0, 0) for folders."""
    found = {}
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d not in EXEMPT_DIRS]
        for name in dirs:
            found[os.path.relpath(os.path.join(folder, name), root)] = (0, 0)
        for name in files:
            path = os.path.join(folder, name)
            stat = os.lstat(path)
            found[os.path.relpath(path, root)] = (stat.st_size, stat.st_mtime_ns)
    return found


def new_entries_message(root: Path, before: Dict[str, Tuple[int, int]]) -> str:
    """"" when ``root`` holds what it held at ``before``, else a message that names what appeared, went or
    changed."""
    after = checkout_entries(root)
    changes = [f"new: {p}" for p in sorted(set(after) - set(before))]
    changes += [f"removed: {p}" for p in sorted(set(before) - set(after))]
    changes += [f"changed: {p}" for p in sorted(set(before) & set(after)) if before[p] != after[p]]
    if not changes:
        return ""
    shown = "\n  ".join(changes[:20]) + ("\n  ..." if len(changes) > 20 else "")
    return (f"the test session changed {len(changes)} entr{'y' if len(changes) == 1 else 'ies'} of the checkout "
            f"{root}; a test must write only under its own temporary folder (tmp_path, its working folder), and "
            f"pass --ckpt_save_dir to the scripts it runs:\n  {shown}")
