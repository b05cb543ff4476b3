"""Where the tests find the project's shared material (`shared/` of the steering repo): `$U2SEG_SHARED`, else the
`shared/` beside this checkout (as CI lays it out), else the workspace copy."""

from __future__ import annotations

import os
from pathlib import Path

_CANDIDATES = [Path(p) for p in (os.environ.get("U2SEG_SHARED"),) if p] + [
    Path(__file__).resolve().parents[2] / "shared",
    Path("/work/shared"),
]
SHARED = next((p for p in _CANDIDATES if p.is_dir()), _CANDIDATES[0])
REAL_IMAGES_DIR = SHARED / "data" / "real_images"
MODEL_REFERENCE = SHARED / "reference" / "u2seg_model"
