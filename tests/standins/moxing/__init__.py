"""Stand-in for OpenI's ``moxing`` (object-storage copies): local folders play the object storage. See ../README.md."""
from . import file  # noqa: F401
