"""policyc: a compiler and runtime for trading policies.

The pipeline stages are subpackages, each importing only those before it:
`policyc.dsl` <- `policyc.compiler` <- `policyc.runtime` <- `policyc.cli`.
"""
from importlib.metadata import PackageNotFoundError, version as _dist_version

try:
    __version__ = _dist_version("policyc")
except PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "0+unknown"
