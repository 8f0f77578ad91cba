"""The benchmarks' CPU record: feature detection, the `--isa` environment, and what a result says."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from benchmarks import cpu_features, run
from imageblocks.learn.precision import native_bf16

CPUINFO = """processor\t: 0
model name\t: Some CPU @ 2.0GHz
flags\t\t: fpu sse2 avx avx2 fma avx512f avx512bw avx512_bf16
processor\t: 1
flags\t\t: fpu
"""


def test_flags_model_and_class_from_cpuinfo():
    flags = cpu_features.cpu_flags(CPUINFO)
    assert {"avx2", "avx512f", "avx512_bf16"} <= flags and "amx_bf16" not in flags
    assert cpu_features.cpu_model(CPUINFO) == "Some CPU @ 2.0GHz"
    assert cpu_features.cpu_class(flags) == "avx512-bf16"
    assert cpu_features.cpu_class({"avx2", "fma"}) == "avx2"
    assert cpu_features.cpu_class({"avx2", "avx512f"}) == "avx512"
    assert cpu_features.cpu_class({"avx512f", "amx_tile", "amx_bf16"}) == "amx"
    assert cpu_features.cpu_class(set()) == "baseline"
    assert cpu_features.cpu_flags("no flags here") == set()


def test_results_are_named_by_cores_model_and_class():
    """Two CPUs with one model name (AMD EPYC with and without AVX-512) get distinct files."""
    cores = len(os.sched_getaffinity(0))
    intel = CPUINFO.replace("Some CPU @ 2.0GHz", "Intel(R) Xeon(R)  Processor")
    assert cpu_features.machine_name(intel) == f"cpu{cores}-Intel Xeon Processor-avx512-bf16"
    avx2 = "model name\t: AMD EPYC\nflags\t\t: fpu avx2 fma\n"
    assert cpu_features.machine_name(avx2) == f"cpu{cores}-AMD EPYC-avx2"
    assert run.machine_name("cpu") == cpu_features.machine_name()


def test_a_run_of_one_recipe_does_not_overwrite_a_whole_run():
    assert run.run_file_name("cpu2-X-avx2", ["points", "multilabel"]) == "cpu2-X-avx2"
    assert run.run_file_name("cpu2-X-avx2", ["points"]) == "cpu2-X-avx2-points"
    assert run.run_file_name("cpu2-X-avx2", ["multilabel"]) == "cpu2-X-avx2-multilabel"


def test_each_side_starts_with_every_data_file_read(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "1.jpg").write_bytes(b"x" * 10)
    (tmp_path / "a" / "b" / "2.jpg").write_bytes(b"y" * 5)
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "3.txt").write_bytes(b"z")
    assert run.warm_page_cache(tmp_path / "a", tmp_path / "c") == 16


def test_isa_env_caps_every_library_and_keeps_the_rest():
    env = cpu_features.isa_env("avx2", {"PATH": "/bin", "ONEDNN_MAX_CPU_ISA": "ALL"})
    assert env == {
        "PATH": "/bin",
        "ATEN_CPU_CAPABILITY": "avx2",
        "ONEDNN_MAX_CPU_ISA": "AVX2",
        "MKL_ENABLE_INSTRUCTIONS": "AVX2",
    }
    assert cpu_features.isa_env("native", {"A": "1"}) == {"A": "1"}
    with pytest.raises(ValueError, match="avx2"):
        cpu_features.isa_env("sse9")


def test_the_benchmark_children_get_the_isa_env_and_fp32():
    assert run.side_env("avx2")["ONEDNN_MAX_CPU_ISA"] == "AVX2"
    assert run.side_env("native") == dict(os.environ)
    assert run.side_precision("avx2", "auto") == "fp32"
    assert run.side_precision("avx2", "bf16") == "bf16"  # asked for: kept (emulated)
    assert run.side_precision("native", "auto") == "auto"


def test_native_bf16_needs_the_flag_and_an_uncapped_code_path():
    flags = {"avx2", "avx512f", "avx512_bf16"}
    assert native_bf16(flags, "AVX512", None)
    assert native_bf16(flags, "AVX512", "AVX512_CORE_BF16")
    assert native_bf16({"amx_bf16"}, "AVX512", "AVX512_CORE_AMX")
    assert not native_bf16(flags, "AVX2", None)  # ATEN_CPU_CAPABILITY=avx2
    assert not native_bf16(flags, "AVX512", "AVX2")  # ONEDNN_MAX_CPU_ISA=AVX2
    assert not native_bf16(flags, "AVX512", "AVX512_CORE_VNNI")
    assert not native_bf16({"avx2", "avx512f"}, "AVX512", None)


def test_the_record_and_the_markdown_say_which_code_path_and_precision():
    record = cpu_features.cpu_record(probe_onednn=False)
    assert set(record) >= {"model", "class", "flags", "cores", "env", "aten_capability"}
    assert set(record["flags"]) == set(cpu_features.FLAGS)
    side = {"cpu": {**record, "onednn_isa": "Intel AVX2"}, "compute_dtype": "float32"}
    ours = {**side, "precision": "fp32", "multilabel": {"fine_tune_s": 10.0}}
    theirs = {**side, "precision": "fp32", "multilabel": {"fine_tune_s": 20.0}}
    md = run.markdown(
        {"machine": "m", "mode": "quick", "date": "d", "command": "c", "isa": "avx2",
         "imageblocks": ours, "fastai": theirs}
    )  # fmt: skip
    assert f"class {record['class']}" in md and "`--isa avx2`" in md
    assert f"| code path (ATen / oneDNN) | {record['aten_capability']} / Intel AVX2 |" in md
    assert "| precision | float32 | float32 | |" in md
    assert "| 10.0 | 20.0 | 0.50x" in md
    assert run.precision_label({"compute_dtype": "bfloat16", "precision": "auto"}) == (
        "bfloat16 (auto)"
    )


@pytest.mark.skipif(
    "avx2" not in cpu_features.cpu_flags() or sys.platform != "linux", reason="x86 Linux with AVX2"
)
def test_under_the_avx2_env_torch_reports_avx2_and_auto_is_float32():
    code = (
        "import json, torch\n"
        "from imageblocks.learn.precision import autocast_dtype\n"
        "print(json.dumps([torch.backends.cpu.get_cpu_capability(),\n"
        "                  str(autocast_dtype('auto', torch.device('cpu')))]))\n"
    )
    env = cpu_features.isa_env("avx2")
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    ).stdout
    assert json.loads(out.splitlines()[-1]) == ["AVX2", "None"]


def test_recipe_steps_table_gives_the_steady_steps_and_the_blocks_mapped_per_step():
    from benchmarks import recipe_steps

    def steps(misses):
        return [{"s": 4.0 + i, "sys_s": 1.0, "minor_faults": 10, "misses": m} for i, m in misses]

    result = {
        "machine": "cpu2-Some-CPU-avx2",
        "isa": "avx2",
        "num_it": 6,
        "workers": 2,
        "command": "python benchmarks/recipe_steps.py",
        "settings": {
            "cache": {
                "lr_find_s": 30.0, "sys_s": 6.0, "minor_faults": 60, "max_rss_mb": 4700,
                "steps": steps(enumerate([100, 240, 380, 520, 660])),
            },
            "kept": {
                "lr_find_s": 25.0, "sys_s": 2.0, "minor_faults": 600, "max_rss_mb": 8700,
                "steps": [{"s": 4.0, "sys_s": 0.0, "minor_faults": 5}] * 5,
            },
        },
    }  # fmt: skip
    table = recipe_steps.markdown(result)
    assert "| cache | 30.0 | 6.0 | 60 | 4700 | 7.0 | 1.0 | 140 |" in table
    assert "| kept | 25.0 | 2.0 | 600 | 8700 | 4.0 | 0.0 | n/a |" in table
