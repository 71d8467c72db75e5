"""Orchestration: the only room that knows Ray, Tune, Parquet, TOML and the command line.

Config loading, the pruning driver and its Ray scorer pool, Tune trainables, the Parquet
result store, reports and the `metantk-nas` CLI live here; the science lives in
`search_spaces`, `kernels` and `trainers`, which never import this package.
"""
