"""Oracle: `cryolens reconstruct` against `relion_reconstruct` on the same STAR file (issue [1·core] 6c).

Both programs read one simulated particle set with true poses and CTF; the FSC of
each full map against the ground truth must agree within 5% in resolution, and with
symmetry the two maps must agree with each other (RELION's group orientations and
the A·g expansion convention).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import mrcfile
import pytest
import torch
from conftest import run_cli

from cryolens.core.fsc import fsc

pytestmark = pytest.mark.relion


def sh(cmd: list[str], cwd: Path) -> None:
    p = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    assert p.returncode == 0, f"{' '.join(cmd)}\n{p.stdout[-1500:]}\n{p.stderr[-1500:]}"


def load(path: Path) -> torch.Tensor:
    return torch.tensor(mrcfile.read(path))


@pytest.fixture(scope="module")
def sim(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("relrec")
    run_cli("simulate", "particles", "--out", "sim", "--n", "2500", "--box", "48", "--pixel-size", "2.5",
            "--snr", "0.1", "--seed", "11", "--quiet", cwd=work)
    return work


def test_resolution_vs_truth_within_5_percent_of_relion(sim: Path):
    run_cli("reconstruct", "--in", "sim/particles.star", "--out", "rec", "--quiet", cwd=sim)
    sh(["relion_reconstruct", "--i", "sim/particles.star", "--o", "relion.mrc", "--ctf"], sim)
    truth = load(sim / "sim" / "truth_map.mrc")
    ours = fsc(load(sim / "rec" / "map.mrc"), truth, pixel_size=2.5)
    theirs = fsc(load(sim / "relion.mrc"), truth, pixel_size=2.5)
    for t in (0.5, 0.143):
        r_ours, r_rel = ours.resolution_at(t), theirs.resolution_at(t)
        assert r_ours <= 1.05 * r_rel, f"FSC={t}: cryolens {r_ours:.2f} Å vs RELION {r_rel:.2f} Å"
    assert ours.resolution_at(0.5) < 10.0


@pytest.mark.parametrize("sym", ["C3", pytest.param("D2", marks=pytest.mark.slow),
                                 pytest.param("D7", marks=pytest.mark.slow),
                                 pytest.param("O", marks=pytest.mark.slow)])  # D2 10 s, D7 and O: 20-30 s each
def test_symmetric_reconstruction_matches_relion(sim: Path, sym: str):
    """Same particles, same symmetry: the two maps must be the same map (RELION's axes, A·g expansion)."""
    run_cli("reconstruct", "--in", "sim/particles.star", "--out", f"rec_{sym}", "--sym", sym, "--quiet", cwd=sim)
    sh(["relion_reconstruct", "--i", "sim/particles.star", "--o", f"relion_{sym}.mrc", "--ctf", "--sym", sym], sim)
    a, b = load(sim / f"rec_{sym}" / "map.mrc"), load(sim / f"relion_{sym}.mrc")
    curve = fsc(a, b, pixel_size=2.5)
    assert curve.resolution_at(0.9) < 8.0, f"{sym}: maps agree only to {curve.resolution_at(0.9):.1f} Å"
    corr = torch.corrcoef(torch.stack([a.reshape(-1), b.reshape(-1)]))[0, 1]
    assert corr > 0.95, f"{sym}: real-space correlation {corr:.3f}"
