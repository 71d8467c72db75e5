"""Dataset loaders behind `trainers.data` (import from there): one module per file format.

`base` holds the split container, errors and registry type; `synthetic`, `omniglot` and
`rfs` (miniImageNet / tieredImageNet) each turn one on-disk or generated format into an
`ImageSplit`.
"""
