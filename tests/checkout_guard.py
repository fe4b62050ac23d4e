"""The suite leaves the checkout as it found it: every test runs in a temporary working folder, and at the end of
the session the checkout is compared with what it held at the start, ignored files included.

Only Python's own bytecode caches (``__pycache__``) are exempt: importing the package writes them, as running
``train.py`` does.
"""
import os
from pathlib import Path
from typing import Set

EXEMPT_DIRS = (".git", "__pycache__")


def checkout_entries(root: Path) -> Set[str]:
    """Every file, folder and link under ``root`` (relative paths), but for ``.git`` and ``__pycache__``."""
    found = set()
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d not in EXEMPT_DIRS]
        found.update(os.path.relpath(os.path.join(folder, name), root) for name in dirs + files)
    return found


def new_entries_message(root: Path, before: Set[str]) -> str:
    """"" when nothing appeared under ``root`` since ``before``, else a message that names what did."""
    added = sorted(checkout_entries(root) - before)
    if not added:
        return ""
    shown = "\n  ".join(added[:20]) + ("\n  ..." if len(added) > 20 else "")
    return (f"the test session left {len(added)} new file(s) or folder(s) in the checkout {root}; a test must write "
            f"only under its own temporary folder (tmp_path, its working folder), and pass --ckpt_save_dir to the "
            f"scripts it runs:\n  {shown}")
