"""The MetaNAS few-shot search space (design section 4), pure torch.

Modules: `ops` (the 7 candidate ops, `PRIMITIVES` order = mask index), `genotypes`
(`Genotype`, parsing without eval, named registry, uniform sampling), `supernet` (masked
supernet, thin linear-region variant), `network` (fixed network from a genotype, drop-path),
`init` (deterministic re-initialisation from a generator), `render` (graphviz cell diagrams).
Import the submodules directly; this package keeps its import free of side effects.
"""
