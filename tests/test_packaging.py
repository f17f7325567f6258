"""Packaging: what `pip install .` ships (olm/assets, the benchmarks' data, the `olm` command, the
pinned dependencies) and, slow, an install into a fresh virtual environment whose `olm fit` runs."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

import olm.cli

ROOT = Path(__file__).resolve().parents[1]


def package_files() -> tuple[set[str], object]:
    """(the data files setuptools puts in the wheel from pyproject.toml's package-data — build_py's own
    computation —, the setuptools Distribution pyproject.toml describes)."""
    from setuptools.config.pyprojecttoml import apply_configuration
    from setuptools.dist import Distribution

    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        dist = Distribution()
        apply_configuration(dist, "pyproject.toml")
        dist.include_package_data = False  # no egg-info written into the checkout; package-data alone decides
        build_py = dist.get_command_obj("build_py")
        build_py.ensure_finalized()
        return {Path(src, name).as_posix() for _, src, _, names in build_py.data_files for name in names}, dist
    finally:
        os.chdir(cwd)


def test_package_data_entry_point_and_pins():
    files, dist = package_files()
    on_disk = {p.relative_to(ROOT).as_posix() for d in ("olm/assets", "olm/bench/data") for p in (ROOT / d).rglob("*")
               if p.is_file() and "__pycache__" not in p.parts}  # fmt: skip
    assert {"olm/assets/olm-tiny/model.safetensors", "olm/assets/logs/sample.jsonl", "olm/assets/anchors.txt",
            "olm/bench/data/general_prompts.txt"} <= on_disk  # fmt: skip
    assert on_disk <= files  # every asset ships
    assert dist.entry_points["console_scripts"] == ["olm = olm.__main__:console"]
    pins = [line.strip() for line in (ROOT / "requirements.txt").read_text().splitlines()
            if line.strip() and not line.startswith("#")]  # fmt: skip
    assert sorted(dist.install_requires + dist.extras_require["test"]) == sorted(pins)


def test_cli_py_and_the_olm_command_are_one_implementation():
    spec = importlib.util.spec_from_file_location("cli_script", ROOT / "cli.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.main is olm.cli.main


@pytest.mark.slow
def test_pip_install_into_a_fresh_venv_and_olm_fit(tmp_path):
    """~1 min: `pip install --no-deps --no-build-isolation` of a copy of the package into a fresh venv
    that sees this environment's packages through a .pth file (like --system-site-packages; nothing is
    downloaded), then the installed `olm fit` on configs/tiny.yaml for 4 turns."""
    src = tmp_path / "src"
    shutil.copytree(ROOT / "olm", src / "olm", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = next((venv / "lib").glob("python*/site-packages"))
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")  # torch & co. from this environment
    py = venv / "bin" / "python"
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", str(src)], check=True,
                   cwd=tmp_path)  # fmt: skip
    where = subprocess.run([str(py), "-c", "import olm; print(olm.__file__)"], check=True, capture_output=True,
                           text=True, cwd=tmp_path).stdout  # fmt: skip
    assert where.startswith(str(site))  # the installed copy, not the checkout
    run = subprocess.run(
        [str(venv / "bin" / "olm"), "fit", "--config", str(ROOT / "configs" / "tiny.yaml"), "--data.max_turns", "4",
         "--data.source", str(site / "olm" / "assets" / "logs" / "sample.jsonl"),
         "--trainer.default_root_dir", str(tmp_path / "runs")],
        capture_output=True, text=True, cwd=tmp_path, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    assert list((tmp_path / "runs").rglob("adapter_model.safetensors"))
