"""Plants a fault from tests/engine/kill_at.py in every Python process started with this folder on PYTHONPATH and
SCRATCHDET_PLANT=POINT:N in its environment: also in the processes a study starts for its arms, which the fault
tests cannot start themselves."""

import os
import sys
from pathlib import Path

if os.environ.get("SCRATCHDET_PLANT"):
    point, n = os.environ["SCRATCHDET_PLANT"].split(":")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from kill_at import plant

    plant(point, int(n))
