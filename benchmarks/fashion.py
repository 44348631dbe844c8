"""Section ``fashion``: time to accuracy on full Fashion-MNIST (experiment=fashion_fast and
fashion_mlp): seconds of training to 89% test accuracy and the accuracy at the end, handprop
under Lightning against the same network, recipe and data in PlainLoop (epoch.py)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import timing
import torch
from epoch import lightning_epochs, plain_epochs

from handprop.compose import bare_config
from handprop.data import load_split, to_pixels, write_idx


def _accuracy_curve(model, states, images, labels) -> list[float]:
    model.eval()
    images, labels = images.to(model.device), labels.to(model.device)
    accs = []
    with torch.no_grad():
        for state in states:
            model.load_state_dict(state)
            correct = sum(
                (model(to_pixels(x)).argmax(1) == y).sum().item()
                for x, y in zip(images.split(2000), labels.split(2000))
            )
            accs.append(correct / len(labels))
    return accs


def fashion_time_to_accuracy(
    data_dir: str,
    experiment: str = "fashion_mlp",
    target: float = 0.89,
    budget_s: float = 180.0,
    device="cpu",
    overrides=(),
) -> dict:
    cfg = bare_config([f"experiment={experiment}", f"data.data_dir={data_dir}", *overrides])
    test_x, test_y = load_split("fashion_mnist", "test", data_dir)
    runs = {"handprop": lightning_epochs, "plain_loop": plain_epochs}
    with timing.threads() as threads:  # each trains the whole recipe, one after the other
        trained = {name: run(cfg, cfg.trainer.max_epochs, snapshots=True, device=device) for name, run in runs.items()}
    out = {
        "recipe": f"experiment={experiment}",
        "device": str(device),
        "threads": threads,
        "target": target,
        "budget_s": budget_s,
    }
    for name, (times, states, model) in trained.items():
        accs = _accuracy_curve(model, states, test_x, test_y)
        elapsed = [sum(times[: i + 1]) for i in range(len(times))]
        reached = next((t for t, a in zip(elapsed, accs) if a >= target), None)
        within = [a for t, a in zip(elapsed, accs) if t <= budget_s]
        out[name] = {
            "epochs": len(times),
            "train_s": elapsed[-1],
            "final_test_acc": accs[-1],
            "seconds_to_target": reached,
            "test_acc_within_budget": within[-1] if within else None,
            "curve": [(round(t, 2), round(a, 4)) for t, a in zip(elapsed, accs)],
        }
    return out


def measure(args) -> dict | None:
    """Both recipes to their target accuracy; --quick: fashion_fast for one epoch on 600
    sample digits written as Fashion-MNIST's files. None when the dataset is not installed."""
    if args.quick:
        quick = {"overrides": ("trainer.max_epochs=1", "data.val_size=100"), "budget_s": 60.0}
        with tempfile.TemporaryDirectory() as fake:
            for split, stem in (("train", "train"), ("test", "t10k")):
                x, y = load_split("sample", split)
                write_idx(Path(fake) / f"{stem}-images-idx3-ubyte.gz", x[:600])
                write_idx(Path(fake) / f"{stem}-labels-idx1-ubyte.gz", y[:600])
            return {"fashion_fast": fashion_time_to_accuracy(fake, "fashion_fast", **quick)}
    root = Path(args.fashion_dir)
    if not (root / "t10k-images-idx3-ubyte.gz").exists() and not (root / "FashionMNIST" / "raw").is_dir():
        print(f"\nFashion-MNIST: not found in {root} (apt-get install dataset-fashion-mnist, or --fashion-dir)")
        return None
    return {e: fashion_time_to_accuracy(root, e, device=args.device) for e in ("fashion_fast", "fashion_mlp")}


# (title, key, format) of the table's columns: the run, how soon it reached the target, where it ended
COLUMNS = [("run", "name", "<10"), ("seconds to target", "to", ">17")]
COLUMNS += [("final test accuracy", "acc", ">19.2%"), ("training s", "train_s", ">10.1f"), ("epochs", "epochs", ">6")]


def report(results: dict | None) -> str:
    lines = []
    for f in (results or {}).values():
        rows = [
            {
                **f[name],
                "name": name,
                "to": "not reached" if f[name]["seconds_to_target"] is None else f"{f[name]['seconds_to_target']:.1f}",
                "acc": f[name]["final_test_acc"],
            }
            for name in ("handprop", "plain_loop")
        ]
        lines += [
            f"\nFashion-MNIST ({f['recipe']}, {f['device']}, {timing.plural(f['threads'], 'CPU thread')}): "
            f"seconds of training to {100 * f['target']:.0f}% test accuracy",
            timing.table(rows, COLUMNS),
        ]
    return "\n".join(lines) if lines else "\nFashion-MNIST: skipped"
