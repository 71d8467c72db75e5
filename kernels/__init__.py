"""Kernels of MetaNTK-NAS: empirical NTK, MetaNTK (MAML / ANIL), condition number,
linear regions, the zero-cost proxy registry (``kernels.proxies``), and (for theory checks) analytic infinite-width kernels.

Pure torch, float64 where it matters, device taken from the inputs (design section 3).
Every public name is resolved lazily (PEP 562 module ``__getattr__``) so that importing
``kernels`` is cheap and does not require optional modules (``kernels.analytic``,
``kernels.second_order``) to exist yet.
"""
from __future__ import annotations

import importlib
from typing import Any

# public name -> (submodule, attribute or None for the module itself)
_EXPORTS: dict[str, tuple[str, str | None]] = {
    "empirical_ntk": ("kernels.ntk", "empirical_ntk"),
    "head_features": ("kernels.ntk", "head_features"),
    "anil_inner_kernel": ("kernels.ntk", "anil_inner_kernel"),
    "NTK_BACKENDS": ("kernels.ntk", "NTK_BACKENDS"),
    "meta_ntk": ("kernels.meta", "meta_ntk"),
    "condition_number": ("kernels.spectral", "condition_number"),
    "count_linear_regions": ("kernels.regions", "count_linear_regions"),
    "count_linear_regions_pairwise": ("kernels.regions", "count_linear_regions_pairwise"),
    "analytic": ("kernels.analytic", None),
    "compute_proxy": ("kernels.proxies", "compute_proxy"),
    "get_proxy": ("kernels.proxies", "get_proxy"),
    "PROXIES": ("kernels.proxies", "PROXIES"),
    "ProxyBatch": ("kernels.proxies", "ProxyBatch"),
    "ProxySettings": ("kernels.proxies", "ProxySettings"),
    "second_order_meta_ntk": ("kernels.second_order", "second_order_meta_ntk"),
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    try:
        module_name, attr = _EXPORTS[name]
    except KeyError:
        raise AttributeError(f"module 'kernels' has no attribute {name!r}; "
                             f"public names: {', '.join(__all__)}") from None
    module = importlib.import_module(module_name)
    value = module if attr is None else getattr(module, attr)
    globals()[name] = value  # cache: later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
