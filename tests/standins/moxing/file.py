"""``mox.file.copy`` and ``copy_parallel`` of the stand-in: plain local copies, folders merged into the target."""
import os
import shutil

CALLS = []


def copy(src_url: str, dst_url: str) -> None:
    CALLS.append(("copy", src_url, dst_url))
    os.makedirs(os.path.dirname(os.path.abspath(dst_url)), exist_ok=True)
    shutil.copyfile(src_url, dst_url)


def copy_parallel(src_url: str, dst_url: str) -> None:
    CALLS.append(("copy_parallel", src_url, dst_url))
    if os.path.isdir(src_url):
        shutil.copytree(src_url, dst_url, dirs_exist_ok=True)
    else:
        copy(src_url, dst_url)
