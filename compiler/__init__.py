"""The policy compiler: checked policy -> IR -> optimised IR -> Numba kernel.

Importing this package must stay cheap: only `jit` and `kernel` import Numba, and only
when a kernel is actually built, so `policyc validate` never pays for it.
"""
