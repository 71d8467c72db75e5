"""The search methods and their display order: one list for the config, the search, the
report and the figures.

A pruning method ranks candidates by the measures it names (design section 5); a fixed
method produces a genotype without scoring; `genotype:NAME` trains a registry genotype.
"""
from __future__ import annotations

from kernels.proxy_names import PROXY_NAMES

# Methods that prune the supernet with scores, and what each one measures (design section 5).
PRUNING_METHODS: dict[str, tuple[str, ...]] = {
    "metantk": ("cn_meta", "rn"),
    "tenas": ("cn_ntk", "rn"),
    "regions": ("rn",),
    "cn-only": ("cn_meta",),
}
# The paper's four pruning methods (the proxy methods below join PRUNING_METHODS after them).
PAPER_PRUNING_METHODS: tuple[str, ...] = tuple(PRUNING_METHODS)
# --- Zero-cost proxy search methods (kept in this one block) ---------------------------
# "<proxy>" prunes with that proxy of kernels.proxies alone and "<proxy>+regions" with the
# proxy and the linear regions, both through Algorithm 1's ranking (harness.ranking:
# `oriented_delta`). "regions" is already a method of its own. Measure "proxy:<name>".
PROXY_MEASURE_PREFIX = "proxy:"
PROXY_WITH_REGIONS = "+regions"
PRUNING_METHODS.update(
    {f"{name}{suffix}": (f"{PROXY_MEASURE_PREFIX}{name}", *extra)
     for name in PROXY_NAMES if name != "regions"
     for suffix, extra in (("", ()), (PROXY_WITH_REGIONS, ("rn",)))})
# -------------------------------------------------------------------------------------------
# Methods that produce a genotype without scoring.
FIXED_METHODS: tuple[str, ...] = ("random", "metanas")
# Display order of the methods in reports (design section 5); other methods follow alphabetically.
METHOD_ORDER: tuple[str, ...] = (*PAPER_PRUNING_METHODS, *FIXED_METHODS)
GENOTYPE_METHOD_PREFIX = "genotype:"  # e.g. "genotype:metanas_og_v2": any registry entry


def valid_methods() -> tuple[str, ...]:
    return (*PRUNING_METHODS, *FIXED_METHODS)


def method_sort_key(method: str) -> tuple[int, str]:
    """Sort key of a method in tables and figures: METHOD_ORDER first, the others alphabetically."""
    return (METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER), method)
