"""Version metadata of RoboCache.

``__version__`` and ``__api_version__`` are edited by hand when releasing (see RELEASING.md).
``__build_date__`` and ``__git_commit__`` are stamped into ``_build_info.py`` when a wheel is
built (``make build``); a source checkout or a build outside git reports "unknown".
"""

__version__ = "0.1.0.dev0"
__api_version__ = "0.1"

try:  # written by tools/stamp_build_info.py at build time, never committed
    from ._build_info import BUILD_DATE as __build_date__
    from ._build_info import GIT_COMMIT as __git_commit__
except ImportError:  # source checkout
    __build_date__ = "unknown"
    __git_commit__ = "unknown"
