"""config.json is checked field by field before anything is built: bad values, wrong types and
garbage give an `ExportError` naming the field, quickly and in bounded memory."""

from __future__ import annotations

import copy
import json
import random
import resource
import time

import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from imageblocks.cli import app
from imageblocks.learn import loading as loading_module
from imageblocks.learn.learner import vision_learner
from imageblocks.learn.loading import load_learner
from imageblocks.learn.model_config import ExportError, validate_config
from imageblocks.transforms.item import Resize
from tests.conftest import noise_voc, voc_block

ARCH = "mobilenetv3_small_050"  # 1.5 M parameters: quick to build and to load


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    """A small multi-label export folder and one image to predict."""
    root = noise_voc(tmp_path_factory.mktemp("tiny"))
    df, dblock = voc_block(root, Resize(32))
    learn = vision_learner(dblock.dataloaders(df, bs=4, num_workers=0), ARCH, pretrained=False)
    learn.thresholds = torch.tensor([0.3, 0.5, 0.7])
    return learn.export(root / "model"), root / "train" / "0.jpg"


@pytest.fixture
def folder(tiny_folder, tmp_path):
    """A fresh copy of the tiny export, and its config."""
    src, _ = tiny_folder
    dst = tmp_path / "model"
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst, json.loads((dst / "config.json").read_text())


def _write(folder, config) -> None:
    (folder / "config.json").write_text(json.dumps(config))


def _resize(**fields) -> dict:
    """A batch Resize entry of config.json, with `fields` added."""
    return {"name": "Resize", "size": [32, 32], **fields}


@pytest.mark.parametrize(
    "edit, field",
    [
        (lambda c: c["model"].update(n_out=1_000_000), "model.n_out"),
        (lambda c: c["item_tfms"][0].update(size=[20000, 20000]), "item_tfms[0].size"),
        (lambda c: c.update(vocab=c["vocab"][:2]), "vocab"),
        (lambda c: c.update(vocab=["car", "car", "dog"]), "vocab"),
        (lambda c: c["model"].update(lin_ftrs=[10**9]), "model.lin_ftrs[0]"),
        (lambda c: c["model"].update(lin_ftrs="512"), "model.lin_ftrs"),
        (lambda c: c["model"].update(arch=7), "model.arch"),
        (lambda c: c["model"].update(arch="no_such_net"), "no_such_net"),
        (lambda c: c["model"].update(surprise=1), "model.surprise"),
        (lambda c: c["model"].pop("n_out"), "model.n_out"),
        (lambda c: c["thresholds"].update(per_class=[0.5, 0.5]), "thresholds.per_class"),
        (lambda c: c["thresholds"].update(per_class=[0.5, float("nan"), 0.5]), "per_class[1]"),
        (lambda c: c["thresholds"].update(per_class=[0.5, 7, 0.5]), "per_class[1]"),
        (lambda c: c.update(task="segmentation"), "task"),
        (lambda c: c.update(task=["multilabel"]), "task"),
        (lambda c: c.update(item_tfms={"name": "Resize"}), "item_tfms"),
        (lambda c: c["item_tfms"][0].update(size="big"), "item_tfms[0].size"),
        (lambda c: c["item_tfms"][0].update(method=3), "item_tfms[0].method"),
        (lambda c: c["item_tfms"][0].update(pad_mode="wrap"), "item_tfms[0].pad_mode"),
        (lambda c: c["item_tfms"][0].update(mode="bilinear"), "item_tfms[0].mode"),
        (lambda c: c["batch_tfms"].insert(0, _resize(pad_mode="wrap")), "batch_tfms[0].pad_mode"),
        (lambda c: c["batch_tfms"].insert(0, _resize(resample=2)), "batch_tfms[0].resample"),
        (lambda c: c["batch_tfms"].append({"name": "Normalize", "mean": [0], "std": [1]}), "mean"),
        (lambda c: c["loss"].update(name="MSELossFlat"), "loss.name"),
        (lambda c: c["loss"].update(thresh=float("inf")), "loss.thresh"),
        (lambda c: c["files"]["model.safetensors"].update(sha256="x"), "sha256"),
        (lambda c: c.update(format_version="1"), "format_version"),
    ],
)
def test_bad_fields_are_named(folder, edit, field):
    path, config = folder
    edit(config)
    _write(path, config)
    with pytest.raises(ExportError) as e:
        load_learner(path)
    assert field in str(e.value) and "\n" not in str(e.value)


def test_nothing_is_built_before_the_weights_header_is_checked(folder, monkeypatch):
    path, config = folder
    config["model"]["n_out"] = 100_000  # allowed by the schema, not by the weights file
    config["vocab"] = [f"c{i}" for i in range(100_000)]
    config["thresholds"]["per_class"] = None
    del config["onnx"]  # its outputs, for 3 classes, would be refused before the weights
    _write(path, config)
    built = []
    real = loading_module.create_vision_model

    def spy(*args, **kwargs):
        built.append(torch.empty(0).device.type)  # "meta" inside the meta-device context
        return real(*args, **kwargs)

    monkeypatch.setattr(loading_module, "create_vision_model", spy)
    with pytest.raises(ExportError, match="wrong shape"):
        load_learner(path)
    assert built == ["meta"]  # only the free, meta-device model was made


def test_weights_of_the_wrong_dtype_are_refused(folder):
    path, _ = folder
    file = path / "model.safetensors"
    state = load_file(str(file))
    name = next(k for k, v in state.items() if v.is_floating_point())
    state[name] = state[name].to(torch.int32)
    save_file(state, str(file))
    config = json.loads((path / "config.json").read_text())
    del config["files"]  # as an export written before the digest: the header check still runs
    _write(path, config)
    with pytest.raises(ExportError, match="wrong dtype"):
        load_learner(path)


def test_garbage_json_is_one_clear_error(folder):
    path, _ = folder
    for text, match in [
        ("[" * 100_000 + "]" * 100_000, "not valid JSON"),
        ('{"format": "imageblocks", "format_version": 1' + ', "a": 1' * 3 + "", "not valid JSON"),
        ('{"n": 1' + "0" * 5000 + "}", "not valid JSON"),
        ("\xff\xfe", "not valid JSON"),
        ("[]", "not an imageblocks model config"),
    ]:
        (path / "config.json").write_text(text, encoding="latin-1")
        with pytest.raises(ExportError, match=match):
            load_learner(path)


# --- the fuzz ----------------------------------------------------------------------------

GARBAGE = [
    None, True, False, 0, -1, 1, 3, 2**31, 10**30, -(10**30), 1e308, 0.5, -0.5,
    float("nan"), float("inf"), float("-inf"), "", "x", "20000", "resnet18", "nan", [], [1],
    [None], ["a", 1], [20000, 20000], [0.5] * 3, {}, {"a": 1}, {"name": "Resize"},
    {"name": "Normalize", "mean": "abc"}, [[[1]]], {"format": "imageblocks"},
]  # fmt: skip
DEEP = "__deep__"


def _locations(obj, out):
    """Every (container, key) of a JSON value, depth first."""
    items = (
        obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else []
    )
    for k, v in list(items):
        out.append((obj, k))
        _locations(v, out)
    return out


def _mutate(config: dict, rng: random.Random) -> tuple[object, str]:
    """A copy of `config` changed in one to three random ways, and what was done."""
    config = copy.deepcopy(config)
    done = []
    for _ in range(rng.randint(1, 3)):
        spots = _locations(config, [])
        if not spots:
            break
        parent, key = rng.choice(spots)
        value, op = parent[key], rng.randrange(8)
        if op == 0:
            del parent[key]
        elif op == 1:
            parent[key] = copy.deepcopy(rng.choice(GARBAGE))
        elif op == 2:
            parent[key] = [value] if rng.random() < 0.5 else {"x": value}
        elif op == 3:
            parent[key] = json.dumps(value) if rng.random() < 0.5 else str(value)
        elif op == 4 and isinstance(value, (int, float)) and not isinstance(value, bool):
            parent[key] = rng.choice([value * 10**6, -value - 1, value + 0.5, value * 10**300])
        elif op == 5 and isinstance(value, list):
            parent[key] = value[: rng.randrange(len(value) + 1)] + value * rng.randrange(3)
        elif op == 6:
            parent[key] = DEEP
        else:
            parent[key] = {"format": "imageblocks", "model": {"model": value}}
        done.append(f"{op}@{key!r}")
    return config, ", ".join(done)


def _text(config: object, rng: random.Random) -> str:
    text = json.dumps(config)
    depth = rng.choice([50, 5000, 200_000])
    return text.replace(json.dumps(DEEP), "[" * depth + "]" * depth)


def test_fuzzed_configs_give_only_export_errors_quickly_and_in_bounded_memory(folder):
    path, config = folder
    rng = random.Random(0)
    load_learner(path)  # warm up: the first load imports and caches
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB
    outcomes = {"refused": 0, "loaded": 0}
    for i in range(150):
        mutated, how = _mutate(config, rng)
        if rng.random() < 0.03:
            mutated, how = rng.choice(GARBAGE), "whole config replaced"
        (path / "config.json").write_text(_text(mutated, rng))
        t0 = time.perf_counter()
        try:
            learn = load_learner(path)
        except ExportError as e:
            took = time.perf_counter() - t0
            outcomes["refused"] += 1
            assert "\n" not in str(e), how
            assert took < 2, (i, how, took)  # refused before any model is built
        except Exception as e:  # anything else is the bug this test looks for
            pytest.fail(f"mutation {i} ({how}) raised {type(e).__name__}: {e}")
        else:
            took = time.perf_counter() - t0
            outcomes["loaded"] += 1
            validate_config(learn.config)
            assert took < 10, (i, how, took)  # a whole model built and loaded, on a busy CPU
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before) / 1024
    assert outcomes["refused"] > 100 and outcomes["loaded"] > 0, outcomes
    assert grown_mb < 300, f"peak memory grew {grown_mb:.0f} MB during the fuzz"


# --- the CLI -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "damage, runtime_predicts",
    [
        (lambda p, c: c["model"].update(n_out=1_000_000), False),
        (lambda p, c: c.update(model="resnet18"), False),
        (lambda p, c: c.update(vocab=None), False),
        (lambda p, c: (p / "model.onnx").write_bytes(b"garbage"), False),
        # the runtime needs no weights but model.onnx's; PyTorch (--device) needs them
        (lambda p, c: (p / "model.safetensors").write_bytes(b"garbage"), True),
        (lambda p, c: (p / "model.safetensors").unlink(), True),
    ],
)
def test_cli_predict_on_a_bad_model_prints_one_line(folder, tiny_folder, damage, runtime_predicts):
    path, config = folder
    damage(path, config)
    _write(path, config)
    args = ["predict", str(path), str(tiny_folder[1])]
    if runtime_predicts:
        assert CliRunner().invoke(app, args).exit_code == 0
        args += ["--device", "cpu"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code != 0
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    assert "Traceback" not in result.output
