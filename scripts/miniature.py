#!/usr/bin/env python3
"""The miniature EFT family: ``build`` it (JAX + optax: ``pip install -e ".[miniature]"``),
then ``report`` the experiment through eft-local's own CLI. See docs/miniature.md."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from miniature.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
