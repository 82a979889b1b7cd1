"""A longer fuzz run of the properties in tests/test_fuzz.py (3,000 examples each instead of 40).

    python benchmarks/fuzz.py            # exit status 0 when every property held
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

if __name__ == "__main__":
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "FERKIT_FUZZ": "long"}
    sys.exit(subprocess.call([sys.executable, "-m", "pytest", "-q", str(root / "tests" / "test_fuzz.py"),
                              "-p", "no:cacheprovider", *sys.argv[1:]], env=env, cwd=root))
