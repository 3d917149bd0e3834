"""Progress bars on stderr that users can turn off (``--quiet`` or ``DIFFCUT_NO_PROGRESS=1``)."""

from __future__ import annotations

import os
import sys
from typing import Optional


def progress_disabled() -> bool:
    return os.environ.get("DIFFCUT_NO_PROGRESS", "").strip().lower() not in ("", "0", "false", "no")


class _NullBar:
    def update(self, n=1):
        pass

    def set_postfix_str(self, s):
        pass

    def close(self):
        pass


def progress_bar(*, total: Optional[int], enabled: bool = True, desc: str = "", unit: str = "it"):
    """A tqdm bar on stderr (``total`` None: a count without an end), or a no-op object when disabled."""
    if not enabled or progress_disabled():
        return _NullBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True, leave=False)


def write_line(text: str, *, progress: bool = True, file=None) -> None:
    """Print one line (default on stderr) without breaking a progress bar that is on screen: through
    ``tqdm.write`` while bars may be shown, else a plain ``print``."""
    file = sys.stderr if file is None else file
    if progress and not progress_disabled():
        try:
            from tqdm.auto import tqdm
        except ImportError:
            pass
        else:
            tqdm.write(text, file=file)
            return
    print(text, file=file)
