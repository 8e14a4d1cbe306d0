"""medpeft: adapt vision foundation models to medical diagnosis with few trainable parameters."""

from medpeft import _compat  # noqa: F401  (must run before timm/torchvision imports)
from medpeft.errors import ConfigError, DataError, MedpeftError, WeightsError

__version__ = "0.1.0"
__all__ = ["ConfigError", "DataError", "MedpeftError", "WeightsError", "__version__"]
