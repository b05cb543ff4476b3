"""u2seg core library."""

# u2seg_core.config and u2seg_core.model.config import each other (PipelineConfig.train holds a ModelConfig,
# ModelConfig builds on StrictModel): importing the root config first makes either import order work.
from . import config as _config  # noqa: F401
