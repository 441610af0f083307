"""Deprecated: moved to :mod:`lorita.ranks.search` (also re-exported by :mod:`lorita.ranks`)."""

import warnings

from lorita.ranks.search import *  # noqa: F403
from lorita.ranks.search import __all__  # noqa: F401

warnings.warn("lorita.rank_search moved to lorita.ranks.search", DeprecationWarning, stacklevel=2)
