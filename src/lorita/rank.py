"""Deprecated: moved to :mod:`lorita.ranks.policies` (also re-exported by :mod:`lorita.ranks`)."""

import warnings

from lorita.ranks.policies import *  # noqa: F403
from lorita.ranks.policies import __all__  # noqa: F401

warnings.warn("lorita.rank moved to lorita.ranks.policies", DeprecationWarning, stacklevel=2)
