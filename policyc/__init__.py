"""policyc: a compiler and runtime for trading policies.

The pipeline stages are subpackages, each importing only those before it:
`policyc.dsl` <- `policyc.compiler` <- `policyc.runtime` <- `policyc.cli`.
"""


def __getattr__(name: str) -> str:
    """`policyc.__version__`, read from the package metadata when first asked for:
    importlib.metadata takes longer to import than a `policyc validate` should."""
    if name != "__version__":
        raise AttributeError(f"module 'policyc' has no attribute {name!r}")
    from importlib.metadata import PackageNotFoundError, version

    try:
        value = version("policyc")
    except PackageNotFoundError:  # imported from a source tree that was never installed
        value = "0+unknown"
    globals()["__version__"] = value
    return value
