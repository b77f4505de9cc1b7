"""Independent oracle: torch-fourier-slice (teamtomo) projections equal ours.

torch-fourier-slice rotates xyz column vectors with the matrix it is given, i.e. it
projects along the rotated frame's z with the transpose of RELION's ``A``; we pass
``Aᵀ``. Skipped when the optional test dependency is absent.
"""

from __future__ import annotations

import pytest
import torch

from cryolens.core.fourier import ift2
from cryolens.core.projector import prepare_volume, project
from cryolens.core.rotations import euler_to_matrix, random_euler
from cryolens.io import read_mrc

tfs = pytest.importorskip("torch_fourier_slice")


def test_projections_agree_with_torch_fourier_slice(shared_data):
    vol, _ = read_mrc(shared_data / "maps" / "emd_3488.mrc")
    vol = torch.tensor(vol)
    gen = torch.Generator().manual_seed(4)
    A = euler_to_matrix(*random_euler(20, gen))
    ours = ift2(project(prepare_volume(vol), A), vol.shape[-1])
    theirs = tfs.project_3d_to_2d(vol, A.transpose(-1, -2), pad_factor=2.0)
    for a, b in zip(ours, theirs):
        c = torch.corrcoef(torch.stack([a.reshape(-1), b.reshape(-1)]))[0, 1]
        assert c > 0.999, f"correlation {c:.5f}"
    scale = (ours * theirs).sum() / (theirs * theirs).sum()
    assert scale == pytest.approx(1.0, rel=0.01)
