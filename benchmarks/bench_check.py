"""Shared by the benchmarks: a speed number only counts if ours computed the same thing, so a benchmark that
prints a max difference exits non-zero when it exceeds the stated bound (``make bench`` then stops)."""

from __future__ import annotations

import sys


def check_max_diff(diff: float, bound: float, what: str = "max |ours - diffusers|") -> bool:
    """Print ``what = diff`` against ``bound``; return whether it is within."""
    ok = diff <= bound
    print(f"{what} = {diff:.2e}  ({'OK' if ok else 'FAIL'}: bound {bound:.0e})")
    return ok


def exit_if_failed(*oks: bool) -> None:
    """Exit with status 1 (after printing everything) when any check failed."""
    if not all(oks):
        print("FAILED: a max difference exceeds its bound; the timings above do not compare like with like")
        sys.exit(1)
