"""The shipped apoferritin model and symmetric assemblies (``cryolens.simulate.assembly``).

Ground truth: the group's own operators (the assembly must be invariant under them), the
shipped chain's residue count, and the assembly's geometry: a hollow shell of 24 chains. The
chain's native place in the 24-mer is unknown (the deposited chain was re-boxed), so the shell
is looser than apoferritin's: 40-90 Å in radius instead of ~40-60 Å.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cryolens.core.symmetry import symmetrize_volume
from cryolens.errors import InputError
from cryolens.jobs.structures import load_structures, parse_spec, read_model, structure_inputs
from cryolens.simulate.assembly import APOFERRITIN_CHAIN, symmetric_assembly


@pytest.fixture(scope="module")
def chain():
    return read_model(str(APOFERRITIN_CHAIN))


def test_shipped_chain_is_one_apoferritin_subunit(chain):
    assert APOFERRITIN_CHAIN.is_file() and APOFERRITIN_CHAIN.stat().st_size < 64_000
    assert len(chain[0]) == 1
    assert 160 <= len(chain[0][0]) <= 190  # residues of one heavy chain


@pytest.mark.parametrize("sym,order", [("O", 24), ("D7", 14), ("C3", 3)])
def test_assembly_has_the_group_order_and_no_clashes(chain, sym, order):
    st = symmetric_assembly(chain, sym)
    assert len(st[0]) == order
    xyz = np.array([a.pos.tolist() for c in st[0] for r in c for a in r])
    n = len(xyz) // order
    from scipy.spatial import cKDTree
    pairs = cKDTree(xyz).query_pairs(3.0, output_type="ndarray")
    assert not (pairs[:, 0] // n != pairs[:, 1] // n).any()  # no heavy atoms of two copies within 3 Å
    assert np.abs(xyz.mean(0)).max() < 1.0  # centred at the origin


def test_builtin_apoferritin_map_is_an_octahedral_hollow_shell():
    s = load_structures(["apoferritin"], pixel_size=3.0, box=64)[0]
    v = s.volume
    assert s.units == "scattering" and v.shape == (64, 64, 64)
    sym = symmetrize_volume(v, "O")
    assert float(torch.corrcoef(torch.stack([v.reshape(-1), sym.reshape(-1)]))[0, 1]) > 0.97
    r = torch.linalg.vector_norm(torch.stack(torch.meshgrid(*[torch.arange(64.0) - 32] * 3, indexing="ij")), dim=0) * 3.0
    mass = [float(v[(r >= a) & (r < a + 10)].sum()) for a in range(0, 100, 10)]  # radial shells, Å
    assert max(mass[:3]) < 0.01 * max(mass)  # hollow: almost nothing within 30 Å of the centre
    assert sum(mass[4:9]) > 0.95 * sum(mass)  # a shell between 40 and 90 Å (outer diameter ≈ 170 Å)


def test_spec_options_and_lineage():
    assert parse_spec("apoferritin:assembly=D7,bfactor=40") == ("model", "apoferritin", {"assembly": "D7", "bfactor": 40.0})
    assert "structure_files" not in structure_inputs(["apoferritin"])  # built in: no file to record
    with pytest.raises(InputError, match="X9"):
        load_structures(["apoferritin:assembly=X9"], pixel_size=3.0, box=64)
