"""Deploying without PyTorch (issue 16): the runtime against today's PyTorch path and fastai.

One run on one machine, the demo multi-label dataset (`imageblocks.demodata`, 128 px,
EfficientNet-Lite0), measuring:

1. cold start: process start to the first prediction printed, and the process's peak RSS, for
   `imageblocks predict MODEL IMAGE` on a self-contained folder (the runtime), the same from a
   virtualenv with only imageblocks-runtime, the PyTorch path (`--device cpu` forces it) and
   fastai's `load_learner` + `predict` (`.venv-fastai`, skipped with a note when absent);
   targets 1.0 s and 250 MB;
2. installed size: the runtime's distributions (`imageblocks-runtime[serve]` and what it
   requires) against the full package's (`imageblocks` and what it requires), from the
   installed files' sizes; and the site-packages of a runtime-only virtualenv against this one;
3. batch prediction: `imageblocks predict MODEL FOLDER --csv out.csv` over 2,000 demo images
   (target 1,000 images/s), in-process and as a command, and the PyTorch path's command;
4. the service: `serve_load.run_load` with 8 clients (target 150 requests/s, p99 50 ms);
5. int8 against float: file size, single-image latency, batch throughput, and the change of mAP,
   accuracy_multi and of the decided label sets on the validation images.

Results: benchmarks/results/runtime-<machine>[-quick].json and .md. Meant to run once on a quiet
machine (about 10 minutes, most of it training the model: pass `--model DIR` to reuse one);
`--quick` is a smoke run (200 images, an untrained model, few repeats).

    .venv/bin/python benchmarks/runtime.py [--quick] [--model DIR] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent
REPO = ROOT.parent
sys.path.insert(0, str(ROOT))

import run as side  # noqa: E402 (the side-by-side benchmark's machine name and writer)
import serve_load  # noqa: E402

FASTAI_PY = REPO / ".venv-fastai" / "bin" / "python"  # the default of --fastai-python
TARGETS = {"cold_start_s": 1.0, "peak_rss_mb": 250, "batch_img_s": 1000, "req_s": 150, "p99": 50}
FASTAI_EXPORT = """
import sys
import pandas as pd
from fastai.vision.all import (ColReader, ColSplitter, DataBlock, ImageBlock, MultiCategoryBlock,
                               RandomResizedCrop, vision_learner)
csv, folder, pkl = sys.argv[1:4]
df = pd.read_csv(csv, keep_default_na=False)
dblock = DataBlock(blocks=(ImageBlock, MultiCategoryBlock), get_x=ColReader('fname', pref=folder + '/'),
                   get_y=ColReader('labels', label_delim=' '), splitter=ColSplitter('is_valid'),
                   item_tfms=RandomResizedCrop(128, min_scale=0.35))
learn = vision_learner(dblock.dataloaders(df, bs=16, num_workers=0), 'efficientnet_lite0',
                       pretrained=False)
learn.export(pkl)
"""
FASTAI_PREDICT = """
import sys
from fastai.vision.all import load_learner
learn = load_learner(sys.argv[1])
print(sys.argv[2], learn.predict(sys.argv[2])[0], flush=True)
"""


def log(*args: Any) -> None:
    print("[runtime]", *args, file=sys.stderr, flush=True)


def python_env(checkout: bool = True) -> dict[str, str]:
    """The environment of a child process: this checkout on PYTHONPATH, or none of it."""
    env = dict(os.environ)
    if checkout:
        paths = [str(REPO), str(REPO / "runtime"), env.get("PYTHONPATH", "")]
        env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    else:
        env.pop("PYTHONPATH", None)
    return env


# --- data and model ----------------------------------------------------------------------------


def demo_data(work: Path, n_images: int) -> Path:
    """The demo multi-label dataset with `n_images` training images (made once in `work`)."""
    from imageblocks.demodata import make_demo_multilabel

    dest = work / f"voc-{n_images}"
    if not (dest / "train.csv").exists():
        log(f"writing {n_images} demo images to {dest}")
        make_demo_multilabel(dest, n_images=n_images, workers=os.cpu_count())
    return dest


def demo_model(data: Path, work: Path, quick: bool) -> Path:
    """A multi-label model trained on `data` (untrained when quick), with its int8 graph."""
    out = work / ("model-quick" if quick else "model")
    if not (out / "config.json").exists():
        cmd = [sys.executable, "-m", "imageblocks", "train", "multilabel"]
        cmd += [
            "--csv",
            str(data / "train.csv"),
            "--images",
            str(data / "train"),
            "--out",
            str(out),
        ]
        # the book's recipe at 128 px (a budget would pick its own size)
        cmd += ["--epochs", "1", "--freeze-epochs", "0", "--bs", "32"] if quick else []
        cmd += ["--epochs", "3", "--freeze-epochs", "4", "--size", "128"] if not quick else []
        log("training:", " ".join(cmd))
        subprocess.run(cmd, check=True, env=python_env(), stdout=subprocess.DEVNULL)
    add_int8(out, data)
    return out


def add_int8(model: Path, data: Path) -> None:
    """Write the folder's int8 graph, calibrated on the dataset's validation images (once)."""
    section = json.loads((model / "config.json").read_text()).get("onnx") or {}
    if "int8" in section:
        return
    cmd = [sys.executable, "-m", "imageblocks", "export-onnx", str(model), "--int8"]
    cmd += ["--images", str(data / "train"), "--csv", str(data / "train.csv")]
    log("quantising:", " ".join(cmd))
    subprocess.run(cmd, check=True, env=python_env(), stdout=subprocess.DEVNULL)


def runtime_venv(work: Path) -> Path | None:
    """A virtualenv with only runtime/[serve]: the tests' cached one, else made in `work`."""
    cached = sorted(REPO.glob(".pytest_cache/runtime-venv-*/.ready"))
    if cached:
        return cached[-1].parent
    venv = work / "runtime-venv"
    if not (venv / ".ready").exists():
        log(f"creating {venv} with only imageblocks-runtime[serve]")
        try:
            subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
            pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q"]
            subprocess.run([*pip, f"{REPO / 'runtime'}[serve]"], check=True, timeout=600)
        except (subprocess.SubprocessError, OSError) as e:
            log(f"no runtime-only virtualenv ({e}): its rows are skipped")
            return None
        (venv / ".ready").write_text("")
    return venv


def fastai_model(data: Path, work: Path, fastai_py: Path) -> Path | None:
    """fastai's export (a pickle) of an untrained EfficientNet-Lite0 on `data`, or None."""
    if not fastai_py.exists():
        return None
    pkl = work / "fastai-export.pkl"
    if not pkl.exists():
        log("exporting a fastai learner")
        folder, csv = str(data / "train"), str(data / "train.csv")
        subprocess.run(
            [str(fastai_py), "-c", FASTAI_EXPORT, csv, folder, str(pkl)],
            check=True,
            env=python_env(checkout=False),
            capture_output=True,
        )
    return pkl


# --- 1. cold start -----------------------------------------------------------------------------


LAUNCHER = """
import json, os, sys, time
cmd, marker = json.loads(sys.argv[1]), sys.argv[2]
read, write = os.pipe()
t0 = time.perf_counter()
pid = os.fork()
if pid == 0:
    os.dup2(write, 1)
    os.close(read)
    os.execvp(cmd[0], cmd)
os.close(write)
out = os.fdopen(read)
line = out.readline()
while line and marker not in line:  # fastai draws a progress bar first
    line = out.readline()
seconds = time.perf_counter() - t0
out.read()
_, status, usage = os.wait4(pid, 0)
print(json.dumps([seconds, usage.ru_maxrss, line, os.waitstatus_to_exitcode(status)]))
"""
"""Runs a command from a small process: the peak RSS the kernel reports for a child counts from
the memory of the process that forked it, so the benchmark itself (with torch) must not."""


def first_line(cmd: list[str], env: dict[str, str], marker: str) -> tuple[float, float, str]:
    """Run `cmd`: (seconds from start to the first line on its stdout that holds `marker`, peak
    RSS in MB, that line)."""
    done = subprocess.run(
        [sys.executable, "-S", "-c", LAUNCHER, json.dumps(cmd), marker],
        env=env,
        capture_output=True,
        text=True,
    )
    try:
        seconds, max_rss_kb, line, status = json.loads(done.stdout)
    except ValueError:
        status, line = None, ""
    if status != 0 or not line.strip():
        raise RuntimeError(f"{' '.join(cmd)} failed ({status}): {done.stderr[-2000:]}")
    return seconds, max_rss_kb / 1024, line.strip()


def cold_starts(
    model: Path, image: Path, venv: Path | None, fastai: tuple[Path, Path | None], repeats: int
) -> dict[str, Any]:
    """Median time to the first prediction and peak RSS of each way to predict one image."""
    py = [sys.executable, "-m", "imageblocks", "predict", str(model), str(image)]
    ways: dict[str, tuple[list[str], dict[str, str]]] = {
        "imageblocks predict (runtime, ONNX Runtime)": (py, python_env()),
        "imageblocks predict --device cpu (PyTorch)": ([*py, "--device", "cpu"], python_env()),
    }
    if venv is not None:
        cmd = [str(venv / "bin" / "imageblocks-runtime"), "predict", str(model), str(image)]
        ways["imageblocks-runtime predict (runtime-only venv)"] = (cmd, python_env(False))
    fastai_py, pkl = fastai
    if pkl is not None:
        cmd = [str(fastai_py), "-c", FASTAI_PREDICT, str(pkl), str(image)]
        ways["fastai load_learner + predict"] = (cmd, python_env(False))
    out: dict[str, Any] = {}
    for name, (cmd, env) in ways.items():
        first_line(cmd, env, image.name)  # warm the page cache: all start from the same state
        runs = [first_line(cmd, env, image.name) for _ in range(repeats)]
        out[name] = {
            "cold_start_s": round(statistics.median(r[0] for r in runs), 3),
            "peak_rss_mb": round(statistics.median(r[1] for r in runs), 1),
            "runs_s": [round(r[0], 3) for r in runs],
            "first_line": runs[0][2][-120:],
        }
        log(name, out[name])
    if pkl is None:
        out["note"] = f"fastai skipped: {fastai_py} not found"
    return out


# --- 2. installed size -------------------------------------------------------------------------


def _canonical(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def _local_requirements(name: str) -> tuple[list[str], dict[str, list[str]]] | None:
    """The requirements of a distribution of this repository (from its pyproject.toml)."""
    files = {
        "imageblocks": REPO / "pyproject.toml",
        "imageblocks-runtime": REPO / "runtime" / "pyproject.toml",
    }
    if _canonical(name) not in files:
        return None
    project = tomllib.loads(files[_canonical(name)].read_text())["project"]
    return project.get("dependencies", []), project.get("optional-dependencies", {})


def _dist_bytes(dist: metadata.Distribution) -> int:
    total = 0
    for f in dist.files or []:
        path = Path(dist.locate_file(f))
        if path.is_file():
            total += path.stat().st_size
    return total


def _package_bytes(name: str) -> int:
    """The size of this repository's own package `name` (its source folder)."""
    folder = {"imageblocks": REPO / "imageblocks", "imageblocks-runtime": REPO / "runtime"}[name]
    return sum(
        p.stat().st_size for p in folder.rglob("*") if p.is_file() and "__pycache__" not in p.parts
    )


def closure_size(requirement: str) -> dict[str, Any]:
    """The installed size of `requirement` and everything it requires, in this environment."""
    from packaging.requirements import Requirement

    sizes: dict[str, int] = {}
    missing: list[str] = []
    todo = [Requirement(requirement)]
    while todo:
        req = todo.pop()
        name = _canonical(req.name)
        if name in sizes:
            continue
        local = _local_requirements(name)
        if local is not None:
            deps, extras = local
            sizes[name] = _package_bytes(name)
            reqs = deps + [r for e in req.extras for r in extras.get(e, [])]
            todo += [Requirement(r) for r in reqs]
            continue
        try:
            dist = metadata.distribution(req.name)
        except metadata.PackageNotFoundError:
            missing.append(name)
            sizes[name] = 0
            continue
        sizes[name] = _dist_bytes(dist)
        for r in map(Requirement, dist.requires or []):
            envs = [{"extra": e} for e in ("", *req.extras)]
            if r.marker is None or any(r.marker.evaluate(e) for e in envs):
                todo.append(r)
    top = sorted(sizes.items(), key=lambda kv: -kv[1])[:6]
    return {
        "mb": round(sum(sizes.values()) / 2**20, 1),
        "distributions": len(sizes),
        "largest_mb": {k: round(v / 2**20, 1) for k, v in top},
        "missing": missing,
    }


def site_packages_mb(venv: Path) -> float:
    """The size of a virtualenv's site-packages, in MB."""
    (site,) = venv.glob("lib/python*/site-packages")
    return round(sum(p.stat().st_size for p in site.rglob("*") if p.is_file()) / 2**20, 1)


def install_sizes(venv: Path | None) -> dict[str, Any]:
    """The runtime's install against the full package's."""
    out = {
        "runtime: imageblocks-runtime[serve] and its requirements": closure_size(
            "imageblocks-runtime[serve]"
        ),
        "full: imageblocks[serve] and its requirements": closure_size("imageblocks[serve]"),
        "site-packages of this environment (with dev tools)": {
            "mb": site_packages_mb(Path(sys.prefix))
        },
    }
    if venv is not None:
        out["site-packages of the runtime-only venv"] = {"mb": site_packages_mb(venv)}
    log("sizes", {k: v["mb"] for k, v in out.items()})
    return out


# --- 3. batch prediction -----------------------------------------------------------------------


def batch_rates(model: Path, folder: Path, work: Path, n: int) -> dict[str, Any]:
    """Images per second predicting every image of `folder` to a CSV, three ways."""
    from imageblocks_runtime.batch import predict_files
    from imageblocks_runtime.model import RuntimeModel

    out: dict[str, Any] = {"images": n}
    loaded = RuntimeModel.load(model)
    t0 = time.perf_counter()
    summary = predict_files(loaded, [folder], work / "batch-inprocess.csv", progress=False)
    seconds = time.perf_counter() - t0
    out["in-process predict_files (runtime)"] = {
        "seconds": round(seconds, 2),
        "img_s": round(n / seconds, 1),
        "rows": summary.files,
    }
    commands = {
        "imageblocks predict FOLDER --csv (runtime, whole command)": [
            sys.executable, "-m", "imageblocks", "predict", str(model), str(folder),
            "--csv", str(work / "batch-command.csv"),
        ],
        "imageblocks predict FOLDER --device cpu (PyTorch, whole command)": [
            sys.executable, "-m", "imageblocks", "predict", str(model), str(folder),
            "--device", "cpu",
        ],
    }  # fmt: skip
    for name, cmd in commands.items():
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, env=python_env(), stdout=subprocess.DEVNULL)
        seconds = time.perf_counter() - t0
        out[name] = {"seconds": round(seconds, 2), "img_s": round(n / seconds, 1)}
    log("batch", out)
    return out


def cpu_ms(fn: Any, n: int) -> float:
    """CPU milliseconds of this process per call of `fn` (median of `n` calls after one)."""
    fn()
    times = []
    for _ in range(n):
        c0 = time.process_time()
        fn()
        times.append(time.process_time() - c0)
    return round(1000 * statistics.median(times), 3)


def cpu_profile(model: Path, files: list[Path], service_ms: float | None) -> dict[str, Any]:
    """Where the CPU goes, one thread: decoding + item transforms, the graph at batch 1 and 64,
    and what a request costs the service beyond them; the ceilings these set on this machine."""
    import numpy as np

    from imageblocks_runtime.model import RuntimeModel
    from imageblocks_runtime.serve.app import check_header

    m = RuntimeModel.load(model, threads=1)
    data = [f.read_bytes() for f in files[:64]]
    prepare = cpu_ms(lambda: [m.prepare(d) for d in data], 5) / len(data)
    header = cpu_ms(lambda: [check_header(d, 16_000_000, m.draft) for d in data], 5) / len(data)
    batch = np.stack([m.prepare(d)[0] for d in data])
    graph_1 = cpu_ms(lambda: m.run(batch[:1]), 30)
    graph_64 = cpu_ms(lambda: m.run(batch), 5) / len(batch)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    out = {
        "cores": cores,
        "prepare_ms_per_image": round(prepare, 3),
        "header_check_ms_per_image": round(header, 3),
        "graph_ms_per_image_bs1": graph_1,
        "graph_ms_per_image_bs64": round(graph_64, 3),
        "batch_ceiling_img_s": round(cores * 1000 / (prepare + graph_64), 1),
    }
    if service_ms is not None:
        out["service_ms_per_request"] = service_ms
        out["service_http_and_rest_ms"] = round(service_ms - prepare - header - graph_1, 3)
        out["service_ceiling_req_s"] = round(cores * 1000 / service_ms, 1)
    log("cpu profile", out)
    return out


# --- 4. the service ----------------------------------------------------------------------------


def service(model: Path, image: Path, quick: bool) -> list[dict[str, Any]]:
    """serve_load with 8 clients: kept connections, fresh ones (as measured before), int8."""
    n = 100 if quick else 400
    rows = [
        serve_load.run_load(model, image, n, 8),
        serve_load.run_load(model, image, n // 4 if quick else n, 8, new_connections=True),
        serve_load.run_load(model, image, n, 8, ["--int8"]),
    ]
    for row in rows:
        log("serve", row)
    return rows


# --- 5. int8 against float ---------------------------------------------------------------------


def validation_set(data: Path) -> tuple[list[Path], list[set[str]]]:
    """The validation images of the demo CSV and their label sets."""
    import csv

    with open(data / "train.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["is_valid"].lower() == "true"]
    return [data / "train" / r["fname"] for r in rows], [set(r["labels"].split()) for r in rows]


def quality(records: list[dict[str, Any]], labels: list[set[str]], vocab: list[str]) -> dict:
    """mAP and accuracy_multi (the model's decisions) of multi-label records."""
    import numpy as np
    import torch

    from imageblocks.learn.metrics import mean_average_precision

    probs = np.array([[r["probabilities"][c] for c in vocab] for r in records])
    decided = np.array([[c in r["labels"] for c in vocab] for r in records])
    targets = np.array([[c in ls for c in vocab] for ls in labels])
    m_ap = mean_average_precision(torch.tensor(probs), torch.tensor(targets), sigmoid=False)
    return {
        "mAP": round(float(m_ap), 4),
        "accuracy_multi": round(float((decided == targets).mean()), 4),
    }


def int8_vs_float(model: Path, data: Path, image: Path, repeats: int) -> dict[str, Any]:
    """Size, latency, throughput and validation metrics of the float and int8 graphs."""
    import numpy as np

    from imageblocks_runtime.model import RuntimeModel

    files, labels = validation_set(data)
    out: dict[str, Any] = {"validation_images": len(files)}
    sets = {}
    for name, int8 in (("float", False), ("int8", True)):
        m = RuntimeModel.load(model, int8=int8)
        for _ in range(3):
            m.predict(image)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            m.predict(image)
            times.append(time.perf_counter() - t0)
        batch = np.stack([m.prepare(f)[0] for f in files[:64]])
        m.run(batch)
        t0 = time.perf_counter()
        for _ in range(3):
            m.run(batch)
        rate = 3 * len(batch) / (time.perf_counter() - t0)
        records = m.predict_many(files, bs=64)
        sets[name] = [tuple(r["labels"]) for r in records]
        out[name] = {
            "file_mb": round(m.file.stat().st_size / 2**20, 2),
            "predict_ms_median": round(1000 * statistics.median(times), 2),
            "graph_img_s_bs64": round(rate, 1),
            **quality(records, labels, m.vocab or []),
        }
        log(name, out[name])
    out["same_label_sets"] = round(
        sum(a == b for a, b in zip(sets["float"], sets["int8"])) / max(1, len(files)), 4
    )
    return out


# --- report ------------------------------------------------------------------------------------


def markdown(result: dict[str, Any]) -> str:
    """The results as Markdown tables."""
    t = TARGETS
    lines = [
        f"# Deploying without PyTorch ({result['machine']}, {result['date']}"
        f"{', quick run' if result['quick'] else ''})",
        "",
        f"command: `{result['command']}`; model: {result['model']}",
        "",
        f"## Cold start (to the first prediction printed) and peak RSS; targets {t['cold_start_s']} s, "
        f"{t['peak_rss_mb']} MB",
        "",
        "| way | cold start (s) | peak RSS (MB) |",
        "| --- | ---: | ---: |",
    ]
    for name, row in result["cold_start"].items():
        if isinstance(row, dict):
            lines.append(f"| {name} | {row['cold_start_s']} | {row['peak_rss_mb']} |")
    if "note" in result["cold_start"]:
        lines += ["", result["cold_start"]["note"]]
    lines += [
        "",
        "## Installed size",
        "",
        "| install | MB | distributions |",
        "| --- | ---: | ---: |",
    ]
    for name, row in result["install"].items():
        lines.append(f"| {name} | {row['mb']} | {row.get('distributions', '')} |")
    b = result["batch"]
    lines += [
        "",
        f"## Batch prediction, {b['images']} demo images at 128 px; target {t['batch_img_s']} images/s",
        "",
        "| way | seconds | images/s |",
        "| --- | ---: | ---: |",
    ]
    lines += [
        f"| {k} | {v['seconds']} | {v['img_s']} |" for k, v in b.items() if isinstance(v, dict)
    ]
    lines += [
        "",
        f"## The service, 8 clients; targets {t['req_s']} requests/s, p99 {t['p99']} ms",
        "",
        serve_load.markdown(result["service"]),
    ]
    q = result["int8"]
    lines += [
        f"## int8 against float ({q['validation_images']} validation images)",
        "",
        "| graph | file (MB) | predict (ms) | graph images/s (bs 64) | mAP | accuracy_multi |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name in ("float", "int8"):
        r = q[name]
        lines.append(
            f"| {name} | {r['file_mb']} | {r['predict_ms_median']} | {r['graph_img_s_bs64']} "
            f"| {r['mAP']} | {r['accuracy_multi']} |"
        )
    lines += [
        "",
        f"Same label sets float vs int8: {100 * q['same_label_sets']:.1f}% of the images.",
    ]
    p = result["cpu_profile"]
    lines += [
        "",
        f"## Where the CPU goes (one thread, ms; {p['cores']} cores)",
        "",
        "| step | ms |",
        "| --- | ---: |",
        f"| decode + item transforms, per image | {p['prepare_ms_per_image']} |",
        f"| upload header check, per image | {p['header_check_ms_per_image']} |",
        f"| graph, batch of 1 | {p['graph_ms_per_image_bs1']} |",
        f"| graph, per image in a batch of 64 | {p['graph_ms_per_image_bs64']} |",
    ]
    if "service_ms_per_request" in p:
        lines += [
            f"| the service, server CPU per request | {p['service_ms_per_request']} |",
            f"| of which HTTP, multipart, JSON, threads, log | {p['service_http_and_rest_ms']} |",
        ]
    ceilings = f"batch prediction {p['batch_ceiling_img_s']} images/s"
    if "service_ceiling_req_s" in p:
        ceilings += f", the service {p['service_ceiling_req_s']} requests/s (server CPU alone)"
    lines += ["", f"Ceilings these set on all cores: {ceilings}."]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: 200 images, few repeats")
    ap.add_argument("--model", type=Path, help="a multi-label model folder (default: trained here)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/imageblocks-runtime-bench"))
    ap.add_argument("--fastai-python", type=Path, default=FASTAI_PY, help="fastai's interpreter")
    args = ap.parse_args()
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    n = 200 if args.quick else 2000
    repeats = 1 if args.quick else 5
    data = demo_data(work, n)
    model = args.model or demo_model(data, work, args.quick)
    if args.model is not None:
        add_int8(model, data)
    image = sorted((data / "train").glob("*.jpg"))[0]
    venv = runtime_venv(work)
    pkl = fastai_model(data, work, args.fastai_python)
    result: dict[str, Any] = {
        "machine": side.machine_name("cpu"),
        "date": time.strftime("%Y-%m-%d"),
        "quick": args.quick,
        "command": " ".join(["benchmarks/runtime.py", *sys.argv[1:]]),
        "model": str(model),
    }
    result["cold_start"] = cold_starts(model, image, venv, (args.fastai_python, pkl), repeats)
    result["install"] = install_sizes(venv)
    result["batch"] = batch_rates(model, data / "train", work, n)
    result["service"] = service(model, image, args.quick)
    result["int8"] = int8_vs_float(model, data, image, 10 if args.quick else 50)
    files = sorted((data / "train").glob("*.jpg"))
    served = result["service"][0]["server_cpu_ms_per_request"]
    result["cpu_profile"] = cpu_profile(model, files, served)
    md = side.write_results("runtime-", result["machine"], args.quick, result, markdown(result))
    print(md)


if __name__ == "__main__":
    main()
