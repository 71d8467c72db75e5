"""Scoring one masked supernet: MetaNTK/NTK condition number and linear-region count.

Ray-free so it can be tested and benchmarked directly; `harness.scorers` wraps it in actors.
A score is a pure function of (spec, masks, key): every random draw — supernet weights, the
kernel task batch, the linear-region inputs — comes from a generator seeded by `key` =
(experiment seed, search id, round, repeat), never from the process. So a candidate gets the
same score on any worker, in any order, after any retry, and the origin and every pruned
candidate of one (round, repeat) share weights and data: the deltas compare like with like
(the reference drew a fresh head per network and added noise to every delta).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from collections import deque
from typing import Any, Callable, Hashable, Iterable, Iterator, Mapping

import numpy as np
import torch

from harness.methods import PROXY_MEASURE_PREFIX
from harness.specs import ScoreSpec, spec_from_config  # noqa: F401  (spec_from_config re-exported)
from kernels.proxy_names import PROXY_NAMES
from trainers.seeds import generator  # noqa: F401  (the key -> generator of every draw)

# What a method may ask for: condition number of the MetaNTK, of the plain NTK, regions,
# and any proxy of kernels.proxies as "proxy:<name>".
MEASURE_NAMES: tuple[str, ...] = ("cn_meta", "cn_ntk", "rn")
PROXY_MEASURES: tuple[str, ...] = tuple(f"{PROXY_MEASURE_PREFIX}{n}" for n in PROXY_NAMES)
N_CELL_TYPES, N_EDGES, N_OPS = 2, 9, 7


@dataclass(frozen=True)
class Job:
    """Score `items` (ids with (2,9,7) masks) of one spec under one key (search, round, repeat)."""

    spec: ScoreSpec
    key: tuple
    measures: tuple[str, ...]
    items: tuple[tuple[Any, np.ndarray], ...]


class JobFeed:
    """Jobs waiting to be scored, which may grow while they are scored.

    A pool takes jobs from the front (`pop`, or plain iteration, which goes on while jobs
    remain) and a result handler may `add` more: each search submits its next round as soon
    as its own round's last result arrives, so a quick search never waits at a round barrier
    for a slow one (`harness.search.run_searches`). A list of jobs works wherever a feed does
    when nothing is added.
    """

    def __init__(self, jobs: Iterable[Job] = ()) -> None:
        self._queue: deque[Job] = deque(jobs)

    def add(self, jobs: Iterable[Job]) -> None:
        self._queue.extend(jobs)

    def pop(self) -> Job:
        return self._queue.popleft()

    def put_back(self, job: Job) -> None:
        """Return a job to the front (its worker died before answering)."""
        self._queue.appendleft(job)

    def __len__(self) -> int:
        return len(self._queue)

    def __iter__(self) -> Iterator[Job]:
        while self._queue:
            yield self._queue.popleft()


@dataclass(frozen=True)
class Score:
    cn_meta: float = math.nan
    cn_ntk: float = math.nan
    rn: float = math.nan
    seconds: float = 0.0
    proxies: Mapping[str, float] = field(default_factory=dict)          # "proxy:<name>" -> value
    proxy_seconds: Mapping[str, float] = field(default_factory=dict)    # "proxy:<name>" -> seconds

    def value(self, measure: str) -> float:
        """The value of any measure: a field (cn_meta, cn_ntk, rn) or a "proxy:<name>"."""
        if measure.startswith(PROXY_MEASURE_PREFIX):
            return self.proxies[measure]
        return getattr(self, measure)


def proxy_settings(spec: "ScoreSpec") -> Any:
    """`kernels.proxies.ProxySettings` of a spec: its kernel settings and `proxy_options`."""
    from kernels.proxies import ProxySettings

    k = spec.kernel
    return ProxySettings(kernel_output=k.kernel_output, kernel_params=k.kernel_params,
                         kernel_backend=k.kernel_backend, region_batch=spec.regions.region_inputs,
                         **dict(k.proxy_options))


def check_measures(measures: tuple[str, ...]) -> None:
    unknown = set(measures) - set(MEASURE_NAMES) - set(PROXY_MEASURES)
    if unknown:
        raise KeyError(f"unknown measures {sorted(unknown)}; valid: {', '.join(MEASURE_NAMES + PROXY_MEASURES)}")


def masks_array(masks: Mapping[str, torch.Tensor] | np.ndarray) -> np.ndarray:
    """Masks as one bool array (2, 9, 7): [normal, reduce] x edge x op."""
    if isinstance(masks, np.ndarray):
        arr = masks.astype(bool)
    else:
        arr = np.stack([np.asarray(masks["normal"].cpu()), np.asarray(masks["reduce"].cpu())]).astype(bool)
    if arr.shape != (N_CELL_TYPES, N_EDGES, N_OPS):
        raise ValueError(f"masks must have shape (2, 9, 7), got {arr.shape}")
    return arr


def masks_dict(arr: np.ndarray) -> dict[str, torch.Tensor]:
    return {"normal": torch.from_numpy(arr[0].copy()), "reduce": torch.from_numpy(arr[1].copy())}


@dataclass
class Scorer:
    """Owns the networks and data of one `ScoreSpec` on one device; built once, reused.

    `score(masks, key, measures)` redraws weights and batches only when `key` changes (the
    origin and all candidates of a (round, repeat) share them), then scores the masked nets.

    Networks (as the reference's search): the kernel supernet ends with GroupNorm + ReLU
    before pooling (`Supernet.lastact`); its `ways`-logit head serves the MetaNTK. The plain
    NTK (`cn_ntk`, TE-NAS) with `ntk_batch = "plain"` runs on its own batch of
    tasks x ways x (shots + queries) plain images (30 by default, all augmented) through the
    same body under a head over the split's base classes (64 for miniImageNet), as the
    reference's TE-NAS ablation; `"tasks"` reuses the MetaNTK's task batch and head.
    Kernel images are normalised per `kernel_normalization` (reference: CIFAR-10 stats).
    """

    spec: ScoreSpec
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    # The spec's split when the caller has it already (shared through Ray's object store:
    # `harness.shared_data`); None = read it from the dataset root.
    preloaded: Any = field(default=None, repr=False)

    def __post_init__(self) -> None:
        from search_spaces.supernet import HeadedSupernet, Supernet, thin_supernet
        from trainers.data import NORMALIZATION
        from trainers.episodes import kernel_normalization

        data, net, k = self.spec.data, self.spec.network, self.spec.kernel
        # `preloaded`: the split from the object store (`harness.shared_data`), read zero-copy
        self.split = self.preloaded if self.preloaded is not None else data.load(data.train_split)
        self.normalization = NORMALIZATION[data.name]  # region inputs: the dataset's statistics
        self.kernel_normalization = kernel_normalization(k.kernel_normalization, self.split)
        in_channels = int(self.split.images.shape[1])
        # The kernel network: the evaluation-size supernet with sample-independent norms and
        # a fresh `ways`-logit head, in train mode (as the reference).
        self.net = Supernet(net.init_channels, k.ways, net.cells, in_channels=in_channels,
                            norm=k.norm).to(self.device)
        self.net.train()
        # The plain NTK's network: the same body under a head over the base classes.
        self.ntk_net = (HeadedSupernet(self.net, self.split.n_classes).to(self.device).train()
                        if k.ntk_batch == "plain" else self.net)
        # The linear-region network: thin supernet on 1x3x3 single-channel crops.
        self.thin = thin_supernet(in_channels=1).to(self.device)
        self.thin.train()
        self._key: tuple | None = None

    def _prepare(self, key: tuple) -> None:
        if key == self._key:
            return
        from search_spaces.init import reinitialize
        from trainers.episodes import sample_kernel_batch, sample_plain_batch, sample_region_inputs

        s, r = self.spec.kernel, self.spec.regions
        reinitialize(self.net, generator(*key, "kernel-weights"))
        reinitialize(self.thin, generator(*key, "region-weights"))
        batch = sample_kernel_batch(self.split, tasks=s.tasks, ways=s.ways, shots=s.shots, queries=s.queries,
                                    image_size=s.kernel_image_size, normalization=self.kernel_normalization,
                                    generator=generator(*key, "kernel-batch"))
        self.x = batch.images.to(self.device)
        self.tasks = [(q.to(self.device), sup.to(self.device)) for q, sup in batch.tasks]
        if s.ntk_batch == "plain":
            reinitialize(self.ntk_net.classifier, generator(*key, "ntk-head"))
            self.ntk_x = sample_plain_batch(self.split, n=self.x.shape[0], image_size=s.kernel_image_size,
                                            normalization=self.kernel_normalization,
                                            generator=generator(*key, "ntk-batch")).images.to(self.device)
        else:
            self.ntk_x = self.x
        self.region_x = sample_region_inputs(self.split, n=r.region_inputs * r.region_batches,
                                             normalization=self.normalization,
                                             generator=generator(*key, "region-inputs")).to(self.device)
        self.labels = batch.labels.to(self.device)
        self._key = key

    def _proxies(self, names: list[str], key: tuple) -> tuple[dict[str, float], dict[str, float]]:
        """Values and seconds of "proxy:<name>" measures on the current masks: the same weights,
        kernel batch (with its task-local labels) and region inputs as the condition numbers."""
        from kernels.proxies import ProxyBatch, compute_proxy, get_proxy

        batch = ProxyBatch(self.x, self.labels, self.tasks, self.spec.kernel.ways, self.region_x)
        # network kind (`kernels.proxies.NETWORKS`) -> (network, batch): `cn_ntk` runs on the
        # TE-NAS network and batch of the search's own `cn_ntk`, so both are one number.
        on = {"kernel": (self.net, batch), "regions": (self.thin, batch),
              "ntk": (self.ntk_net, ProxyBatch(self.ntk_x, self.labels, self.tasks, self.spec.kernel.ways,
                                               self.region_x))}
        settings = proxy_settings(self.spec)
        values, seconds = {}, {}
        for measure in names:
            name = measure[len(PROXY_MEASURE_PREFIX):]
            net, proxy_batch = on[get_proxy(name).network]
            start = time.perf_counter()
            # A fresh generator per proxy and key: the same draws for the origin and every candidate.
            values[measure] = compute_proxy(name, net, proxy_batch, settings, generator(*key, "proxy", name))
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            seconds[measure] = time.perf_counter() - start
        return values, seconds

    def _cn(self, meta: bool) -> float:
        from kernels import anil_inner_kernel, condition_number, empirical_ntk, head_features, meta_ntk

        s = self.spec.kernel
        if not meta:
            return condition_number(empirical_ntk(self.ntk_net, self.ntk_x, output=s.kernel_output,
                                                  params=s.kernel_params, backend=s.kernel_backend))
        theta = empirical_ntk(self.net, self.x, output=s.kernel_output, params=s.kernel_params,
                              backend=s.kernel_backend)
        if s.kernel_output != "sum":
            raise ValueError("search.kernel_output = 'full' is only supported for the plain NTK (tenas); "
                             "the MetaNTK task indices address samples, not sample-logit pairs")
        inner = None
        if s.algorithm == "anil":
            with torch.no_grad():
                inner = anil_inner_kernel(head_features(self.net, self.x), s.ways)
        phi = meta_ntk(theta, self.tasks, inner=inner, inner_time=s.inner_time, reg=s.reg)
        return condition_number(phi)

    def _cn_batched(self, masks: list[np.ndarray], meta: bool) -> list[float]:
        """CN of several candidates from ONE forward/backward over the stacked batches.

        Candidate b sees the kernel batch through its own masks (`Supernet.sample_masks`);
        samples are independent (GroupNorm), so block b of the big NTK is candidate b's NTK.
        Worth it where the per-layer work is launch-bound (GPU); on a CPU it is not faster.
        """
        from kernels import anil_inner_kernel, condition_number, empirical_ntk, head_features, meta_ntk

        s = self.spec.kernel
        net, x = (self.net, self.x) if meta else (self.ntk_net, self.ntk_x)
        k, n = len(masks), x.shape[0]
        self.net.sample_masks = torch.from_numpy(np.stack(masks)).to(self.device)
        try:
            x = x.repeat(k, 1, 1, 1)
            # Only the k diagonal (n, n) blocks: the cross-candidate blocks are never used.
            theta = empirical_ntk(net, x, output=s.kernel_output, params=s.kernel_params,
                                  backend=s.kernel_backend, blocks=k).reshape(k, n, n)
            feats = None
            if meta and s.algorithm == "anil":
                with torch.no_grad():
                    feats = head_features(self.net, x)
        finally:
            self.net.sample_masks = None
        out = []
        for b in range(k):
            block = theta[b]
            if not meta:
                out.append(condition_number(block))
                continue
            inner = None if feats is None else anil_inner_kernel(feats[b * n:(b + 1) * n], s.ways)
            out.append(condition_number(meta_ntk(block, self.tasks, inner=inner, inner_time=s.inner_time, reg=s.reg)))
        return out

    def score_many(self, masks: list[np.ndarray], key: tuple, measures: tuple[str, ...], *,
                   batch: int = 1) -> list[Score]:
        """`score` for several candidates; condition numbers `batch` candidates per pass."""
        check_measures(measures)
        if batch <= 1 or len(masks) == 1 or not any(m.startswith("cn") for m in measures):
            return [self.score(m, key, measures) for m in masks]
        if self.spec.kernel.kernel_output != "sum":
            raise ValueError("batched scoring supports kernel_output = 'sum' only")
        start = time.perf_counter()
        self._prepare(key)
        arrays = [masks_array(m) for m in masks]
        values: dict[str, list[float]] = {}
        for name in ("cn_meta", "cn_ntk"):
            if name in measures:
                values[name] = []
                for i in range(0, len(arrays), batch):
                    values[name] += self._cn_batched(arrays[i:i + batch], meta=name == "cn_meta")
        # Regions and proxies one candidate at a time (thin net / own passes).
        rest = tuple(m for m in measures if m == "rn" or m.startswith(PROXY_MEASURE_PREFIX))
        others = [self.score(m, key, rest) for m in arrays] if rest else None
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        per = (time.perf_counter() - start) / len(arrays)  # device time shared equally
        return [Score(**{k: v[i] for k, v in values.items()},
                      **({"rn": others[i].rn, "proxies": others[i].proxies,
                          "proxy_seconds": others[i].proxy_seconds} if others else {}), seconds=per)
                for i in range(len(arrays))]

    def score(self, masks: np.ndarray, key: tuple, measures: tuple[str, ...]) -> Score:
        check_measures(measures)
        start = time.perf_counter()
        self._prepare(key)
        m = masks_dict(masks_array(masks))
        out: dict[str, Any] = {}
        proxy_names = [x for x in measures if x.startswith(PROXY_MEASURE_PREFIX)]
        if proxy_names:
            self.net.set_masks(m)
            self.thin.set_masks(m)
            out["proxies"], out["proxy_seconds"] = self._proxies(proxy_names, key)
        if "cn_meta" in measures or "cn_ntk" in measures:
            self.net.set_masks(m)
            if "cn_meta" in measures:
                out["cn_meta"] = self._cn(meta=True)
            if "cn_ntk" in measures:
                out["cn_ntk"] = self._cn(meta=False)
        if "rn" in measures:
            from kernels import count_linear_regions

            self.thin.set_masks(m)
            # Batches of `region_inputs` as the reference: the thin net's train-mode BatchNorm
            # normalises each batch with its own statistics.
            out["rn"] = float(count_linear_regions(self.thin, self.region_x,
                                                   batch_size=self.spec.regions.region_inputs))
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return Score(**out, seconds=time.perf_counter() - start)


# Candidates per forward/backward on a GPU, where the per-layer work of one 30-image batch is
# launch-bound (measured on an H100: 0.38 s per MetaNTK CN against a 0.09 s forward+backward).
GPU_CANDIDATE_BATCH = 16


def default_batch(device: torch.device) -> int:
    """Batched candidate scoring on GPUs only: on a CPU the work is compute-bound (measured)."""
    return GPU_CANDIDATE_BATCH if device.type == "cuda" else 1


def score_job(scorers: dict[ScoreSpec, Scorer], job: Job, device: torch.device, batch: int,
              preload: Callable[[ScoreSpec], Any] | None = None) -> list[tuple[Hashable, Score]]:
    """Score one job with the cached `Scorer` of its spec (built on first use, kept in
    `scorers`); `batch` candidates per kernel pass. Shared by `InlinePool` and the Ray actors.
    `preload(spec)`: the spec's training split when the caller has it already (the actors:
    `harness.shared_data.preloaded_split`, from the object store), None to read the root."""
    scorer = scorers.get(job.spec)
    if scorer is None:
        scorer = scorers[job.spec] = Scorer(job.spec, device, preloaded=preload(job.spec) if preload else None)
    scores = scorer.score_many([m for _, m in job.items], job.key, job.measures, batch=batch)
    return [(ident, sc) for (ident, _), sc in zip(job.items, scores)]


class InlinePool:
    """A scorer pool in this process (no Ray): same `run(jobs, on_result)` as `ScorerPool`.

    For benchmarks, debugging and machines without Ray; scores are identical to the actors'
    (same pure function). `device` is where the networks live. On a CPU it scores with one
    torch thread, as each CPU actor does: the float summation order, and so the last digits
    of a condition number (about 1e-4 relative), depend on the thread count.
    """

    def __init__(self, device: torch.device | str = "cpu", batch: int | None = None) -> None:
        self.device = torch.device(device)
        self.batch = batch if batch is not None else default_batch(self.device)
        self.size = 1
        self.device_kind = torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else "cpu"
        self.label = f"inline:{self.device}"
        self._scorers: dict[ScoreSpec, Scorer] = {}

    def run(self, jobs: Any, on_result: Any) -> None:
        threads = torch.get_num_threads()
        if self.device.type == "cpu":
            torch.set_num_threads(1)
        try:
            for job in jobs:
                on_result(job, self.label, score_job(self._scorers, job, self.device, self.batch))
        finally:
            torch.set_num_threads(threads)

    def shutdown(self) -> None:
        self._scorers.clear()
