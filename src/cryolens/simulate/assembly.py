"""Symmetric assemblies of one chain, and the models the package ships.

Pure functions on ``gemmi.Structure`` objects, plus the path of the shipped model
(read by the job layer). The package ships one small wwPDB model so that a fresh
install can simulate a real protein without any download:

* :data:`APOFERRITIN_CHAIN`: chain A of PDB 7A4M (mouse heavy-chain apoferritin;
  wwPDB data are CC0), re-boxed into a P1 cell by the qFit-3.0 example (MIT), with
  hydrogens, alternative conformations, ligands and waters removed (28 kB gzipped).

The chain was re-boxed, so its native place in the 24-mer is unknown.
:func:`symmetric_assembly` places copies with cryolens's own symmetry operators: the
chain keeps its orientation, its centroid goes to the smallest radius (2 Å steps)
where no two copies come closer than 3 Å (heavy atoms), along a direction on no
symmetry axis (for Dn off the equator). ``O`` gives a hollow 24-mer of apoferritin's
size (outer diameter ≈ 130 Å), ``D7`` a double heptameric ring.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["APOFERRITIN_CHAIN", "BUILTIN_MODELS", "symmetric_assembly"]

APOFERRITIN_CHAIN = Path(__file__).with_name("data") / "apoferritin_7a4m_chain.pdb.gz"

#: Built-in structure names → (shipped model, default assembly symmetry).
BUILTIN_MODELS = {"apoferritin": (APOFERRITIN_CHAIN, "O")}

_MIN_GAP = 3.0  # Å between heavy atoms of different copies


def _direction(sym: str) -> np.ndarray:
    u = np.array([0.62, 0.48, 0.62]) if sym.upper().startswith("D") else np.array([0.83, 0.41, 0.38])
    return u / np.linalg.norm(u)


def symmetric_assembly(structure, sym: str):
    """The ``sym`` assembly of the first chain of ``structure`` (a ``gemmi.Structure``).

    Hydrogens, alternative conformations, ligands and waters are dropped first. Copy
    ``i`` is ``g_i (x − c + r·u)`` with ``g_i`` the i-th operator of
    :func:`cryolens.core.symmetry.symmetry_matrices`, ``c`` the chain's centroid, ``u``
    a fixed direction on no symmetry axis and ``r`` (Å) the smallest radius in 2 Å
    steps (from 20 Å) at which no heavy atoms of two copies are within 3 Å.

    Returns:
        A new ``gemmi.Structure`` with one model of ``order(sym)`` chains, the
        assembly's centroid at the origin.
    """
    import gemmi
    import torch
    from scipy.spatial import cKDTree

    from cryolens.core.symmetry import symmetry_matrices

    st = structure.clone()
    st.setup_entities()
    st.remove_hydrogens()
    st.remove_alternative_conformations()
    st.remove_ligands_and_waters()
    st.remove_empty_chains()
    chain = st[0][0]
    pos = np.array([a.pos.tolist() for r in chain for a in r])
    com = pos.mean(0)
    g = symmetry_matrices(sym, dtype=torch.float64).numpy()
    u = _direction(sym)
    radius = 20.0
    for radius in np.arange(20.0, 200.0, 2.0):
        base = pos - com + radius * u
        tree = cKDTree(base)  # by symmetry, copy 0 against the others covers every pair of copies
        others = np.concatenate([base @ m.T for m in g[1:]])
        if not np.isfinite(tree.query(others, distance_upper_bound=_MIN_GAP)[0]).any():
            break
    centre = (radius * u) @ g.mean(0).T  # the assembly's centroid (0 unless the group fixes an axis)
    out = gemmi.Structure()
    out.cell = st.cell
    model = gemmi.Model("1")
    for i, m in enumerate(g):
        c = gemmi.Chain(f"{chr(65 + i % 26)}{i // 26 or ''}")
        for res in chain:
            r = gemmi.Residue()
            r.name, r.seqid, r.het_flag = res.name, res.seqid, res.het_flag
            for a in res:
                b = gemmi.Atom()
                b.name, b.element, b.occ, b.b_iso = a.name, a.element, a.occ, a.b_iso
                b.pos = gemmi.Position(*((np.array(a.pos.tolist()) - com + radius * u) @ m.T - centre))
                r.add_atom(b)
            c.add_residue(r)
        model.add_chain(c)
    out.add_model(model)
    out.setup_entities()
    return out
