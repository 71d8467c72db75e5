"""Names and directions of the proxies of `kernels.proxies`, without importing torch.

The configuration and the report need the names (valid search methods, leaderboard order)
and whether a larger value predicts a better network; they must stay importable without
torch. `kernels.proxies` builds its registry from this table and a test checks both agree.
"""
from __future__ import annotations

# name -> higher_is_better, in leaderboard order: the paper's scores first, then the
# zero-cost proxies of Abdelfattah et al. 2021 / NAS-Bench-Suite-Zero, then the baselines.
PROXY_DIRECTIONS: dict[str, bool] = {
    "cn_metantk_maml": False,
    "cn_metantk_anil": False,
    "cn_metantk_maml_finite": False,
    "cn_metantk_anil_finite": False,
    "cn_ntk": False,
    "regions": True,
    "synflow": True,
    "snip": True,
    "grasp": True,
    "fisher": True,
    "grad_norm": True,
    "jacov": True,
    "nwot": True,
    "zen": True,
    "epe_nas": True,
    "l2_norm": True,
    "plain": True,
    "params": True,
    "flops": True,
}
PROXY_NAMES: tuple[str, ...] = tuple(PROXY_DIRECTIONS)
