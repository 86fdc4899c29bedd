#!/usr/bin/env python3
"""Download an eft-local model profile: same as `eft-local download`, for a cloned repo.

python scripts/download_models.py [PROFILE | --all] [--models-dir DIR] [--models-file PATH]

Without installing eft-local it needs the one package the download uses, huggingface_hub (and
tomli on Python 3.10); any Python that has it works. A missing one is named in one line.
"""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main(argv: list[str]) -> int:
    try:
        from eft_local.cli.models import download_main

        return download_main(argv)
    except ModuleNotFoundError as e:
        if not e.name or e.name.split(".")[0] == "eft_local":
            raise
        print(
            f"download_models.py: this Python ({sys.executable}) lacks the package {e.name!r}: "
            f"`{Path(sys.executable).name} -m pip install huggingface_hub`, or run scripts/install.sh "
            "and then `.venv/bin/eft-local download`",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
