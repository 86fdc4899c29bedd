#!/usr/bin/env python3
"""Download an eft-local model profile: same as `eft-local download`, for a cloned repo.

python scripts/download_models.py [PROFILE | --all] [--models-dir DIR] [--models-file PATH]
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from eft_local.cli.models import download_main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(download_main(sys.argv[1:]))
