"""Few-shot evaluation and training throughput: batched logistic regression vs sklearn, RFS epoch.

    .venv/bin/python benchmarks/bench_eval.py [--device cpu|cuda] [--episodes 600] [--dim 768]
                                              [--sklearn-episodes 100] [--train-batches 5]

Part 1 (evaluation): fixed random L2-normalised features of a 64-class split
(`--dim`, default 768 = the feature size of the paper's 5-cell C=48 network), 5-way 1-shot
and 5-shot episodes with 15 queries. Times `trainers.fewshot.evaluate_episodes` (all
episodes of a batch fitted at once by batched Newton in float64 on `--device`) against one
`sklearn.linear_model.LogisticRegression(C=1, lbfgs)` fit per episode (the reference's way)
on `--sklearn-episodes` of them, and prints episodes/s, the speed-up and the largest
accuracy difference on the episodes both fitted (0 when both reach the same optimum).

Part 2 (training): seconds per RFS mini-batch (64 images, SGD step) of the paper-size
`Network` (5 cells, C=48, `metanas_in_v2` cells) on 84x84 images and of the Omniglot-size one
(3 cells, C=16, 28x28), extrapolated to an epoch of mini-ImageNet's 38,400 training images
and of the 2,900 Omniglot background images used here.

Part 3 (`--pipeline`): the trainers end to end on `--device`, as a Tune trial runs them:
`pretrain` (synthetic recipe: 4 epochs, checkpoint per epoch) of a 3-cell C=16 network on
the synthetic dataset, twice from the same seed (prints both final losses: equal when the
device's kernels are deterministic), then `evaluate_model` on 200 5-way 1-shot episodes of
the held-out classes. Prints figures, asserts nothing.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_fits(device: torch.device, episodes: int, dim: int, sklearn_episodes: int) -> None:
    from trainers.episodes import sample_episodes
    from trainers.fewshot import evaluate_episodes

    g = torch.Generator().manual_seed(0)
    classes, per_class = 64, 30
    labels = torch.arange(classes).repeat_interleave(per_class)
    # Class-structured features (a mean per class plus noise) so accuracies are not trivial.
    means = torch.randn(classes, dim, generator=g)
    feats = means[labels] + 1.5 * torch.randn(len(labels), dim, generator=g)
    feats = torch.nn.functional.normalize(feats, dim=1)
    print(f"\n# evaluation: {episodes} episodes, 5-way, 15 queries, D={dim}, device {device}")
    print(f"{'shots':>5} {'batched s':>10} {'ep/s':>8} {'sklearn s/ep':>13} {'ep/s':>7} {'speed-up':>9} "
          f"{'max |acc diff|':>15}")
    for shots in (1, 5):
        eps = sample_episodes(labels, ways=5, shots=shots, queries=15, count=episodes, seed=shots)
        f_dev = feats.to(device)
        evaluate_episodes(f_dev, None, eps, progress=False)  # warm-up (CUDA context, kernels)
        _sync(device)
        start = time.perf_counter()
        accs = evaluate_episodes(f_dev, None, eps, progress=False)
        _sync(device)
        batched = time.perf_counter() - start
        line = f"{shots:>5} {batched:>10.3f} {episodes / batched:>8.1f}"
        try:
            from sklearn.linear_model import LogisticRegression
        except ImportError:
            print(line + "   (scikit-learn not installed: no comparison)")
            continue
        if sklearn_episodes <= 0:
            print(line)
            continue
        n = min(sklearn_episodes, episodes)
        x = feats.numpy()
        ref = np.empty(n)
        start = time.perf_counter()
        for e in range(n):
            s, q = eps.support[e].numpy(), eps.query[e].numpy()
            clf = LogisticRegression(C=1.0, max_iter=1000).fit(x[s], eps.support_labels[e].numpy())
            ref[e] = (clf.predict(x[q]) == eps.query_labels[e].numpy()).mean()
        per = (time.perf_counter() - start) / n
        diff = float(np.abs(accs[:n].cpu().numpy() - ref).max())
        print(line + f" {per:>13.4f} {1 / per:>7.1f} {per * episodes / batched:>8.1f}x {diff:>15.4f}")


def bench_training(device: torch.device, batches: int) -> None:
    from search_spaces.genotypes import resolve_genotype
    from search_spaces.network import Network

    print(f"\n# RFS training step (batch 64, SGD momentum 0.9, wd 5e-4), device {device}")
    print(f"{'network':<34} {'s/batch':>8} {'epoch (s)':>10} {'images/epoch':>13}")
    genotype = resolve_genotype("metanas_in_v2")
    settings = [("paper: 5 cells, C=48, 84x84x3", 5, 48, 3, 84, 64, 38_400),
                ("omniglot: 3 cells, C=16, 28x28x1", 3, 16, 1, 28, 145, 2_900)]
    for label, cells, C, channels, size, classes, images in settings:
        torch.manual_seed(0)
        model = Network(genotype, C=C, num_classes=classes, cells=cells, in_channels=channels).to(device)
        model.train()
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
        x = torch.randn(64, channels, size, size, device=device)
        y = torch.randint(0, classes, (64,), device=device)

        def step() -> None:
            opt.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()

        step()
        _sync(device)
        start = time.perf_counter()
        for _ in range(batches):
            step()
        _sync(device)
        per = (time.perf_counter() - start) / batches
        print(f"{label:<34} {per:>8.3f} {per * images / 64:>10.1f} {images:>13,}")


def bench_pipeline(device: torch.device, epochs: int) -> None:
    import dataclasses
    import tempfile

    from search_spaces.genotypes import resolve_genotype
    from search_spaces.init import reinitialize
    from search_spaces.network import Network
    from trainers.data import load_split
    from trainers.episodes import sample_episodes
    from trainers.fewshot import evaluate_model, mean_confidence_interval
    from trainers.rfs import get_recipe, pretrain

    print(f"\n# pipeline on {device}: pretrain (synthetic recipe) + 200 episodes 5-way 1-shot")
    options = {"train_classes": 32, "val_classes": 8, "test_classes": 16, "images_per_class": 40}
    train = load_split("synthetic", None, "train", seed=0, **options)
    test = load_split("synthetic", None, "test", seed=0, **options)
    cfg = get_recipe("synthetic")
    if epochs != cfg.epochs:
        cfg = dataclasses.replace(cfg, epochs=epochs, lr_decay_epochs=tuple(e for e in cfg.lr_decay_epochs if e < epochs))
    losses = []
    for run in range(2):
        model = Network(resolve_genotype("metanas_in_v2"), C=16, num_classes=32, cells=3, in_channels=3)
        reinitialize(model, generator=torch.Generator().manual_seed(0))
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            result = pretrain(model, train, cfg, device=device, checkpoint_dir=tmp, progress=False)
            _sync(device)
            seconds = time.perf_counter() - start
        losses.append(result.final_loss)
        print(f"run {run}: {result.epochs_run} epochs in {seconds:.1f} s, final loss {result.final_loss:.6f}, "
              f"train acc {100 * result.final_train_acc:.1f} %")
    print(f"same seed, same final loss: {losses[0] == losses[1]} (difference {abs(losses[0] - losses[1]):.2e})")
    episodes = sample_episodes(test.labels, ways=5, shots=1, queries=15, count=200, seed=0)
    start = time.perf_counter()
    accs = evaluate_model(model, test, episodes, device=device, progress=False)
    _sync(device)
    mean, half = mean_confidence_interval(accs)
    print(f"evaluation: {100 * mean:.2f} ± {100 * half:.2f} % in {time.perf_counter() - start:.2f} s")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--episodes", type=int, default=600)
    p.add_argument("--dim", type=int, default=768)
    p.add_argument("--sklearn-episodes", type=int, default=100)
    p.add_argument("--train-batches", type=int, default=5, help="0 skips the training part")
    p.add_argument("--pipeline", action="store_true", help="also run part 3 (trainers end to end)")
    p.add_argument("--pipeline-epochs", type=int, default=4, help=argparse.SUPPRESS)  # smoke-testing the script
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads on a CPU (default 1)")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, device {device}"
          + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else
             f", {torch.get_num_threads()} thread(s)"))
    bench_fits(device, args.episodes, args.dim, args.sklearn_episodes)
    if args.train_batches > 0:
        bench_training(device, args.train_batches)
    if args.pipeline:
        bench_pipeline(device, args.pipeline_epochs)


if __name__ == "__main__":
    main()
