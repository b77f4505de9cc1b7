"""Point-group symmetry: RELION 3.1 group matrices, equivalent poses, map symmetrisation.

Groups (case-insensitive names): ``C1``, ``Cn``, ``Dn``, ``T``, ``O``, ``I``
(= ``I2``), ``I1``…``I4``, with the orientations of RELION 3.1
(``src/symmetries.cpp``):

* ``Cn``: n-fold about z. ``Dn``: n-fold about z and a 2-fold about x.
* ``T``: 3-fold about z, 2-fold about (0, 0.816496, 0.577350).
* ``O``: 3-fold about (1, 1, 1)/√3, 4-fold about z.
* ``I1``: 2-fold about x, 5-fold about (0.8507, 0, -0.5257), 3-fold about (0.9342, 0.3568, 0).
* ``I2``: 2-fold about z, 5-fold about (0.5257, 0, 0.8507), 3-fold about (0, 0.3568, 0.9342).
* ``I3``: 2-fold about (-0.5257, 0, 0.8507), 5-fold about z, 3-fold about (-0.4911, 0.3568, 0.7947).
* ``I4``: 2-fold about (0.5257, 0, 0.8507), 5-fold about (0.8944, 0, 0.4472), 3-fold about (0.4911, 0.3568, 0.7947).

Convention: matrices act on ``(x, y, z)`` column vectors about the box centre
(index ``N//2`` on each axis). A map with symmetry ``G`` satisfies
``V(g·x) = V(x)`` for all ``g`` in ``G``. Since RELION projects with
``image(x, y) = ∫ V(Aᵀ (x, y, z)ᵀ) dz``, the poses ``A`` and ``A·g`` give the
same projection, so the poses equivalent to ``A`` are ``{A·g : g ∈ G}``
(:func:`expand_poses`); the viewing direction (third row of ``A``) maps to
``gᵀ·d``.
"""

from __future__ import annotations

import math
import re
from functools import lru_cache

import torch
import torch.nn.functional as F

from cryolens.errors import InputError

from .rotations import axis_angle_to_matrix

__all__ = ["symmetry_matrices", "symmetry_order", "expand_poses", "rotate_volume", "symmetrize_volume", "SYMMETRY_HELP",
           "SYMMETRY_RULE", "valid_symmetry"]

_ICOS = {
    "I1": [(2, (1.0, 0.0, 0.0)), (5, (0.85065080702670, 0.0, -0.5257311142635)), (3, (0.9341723640, 0.3568220765, 0.0))],
    "I2": [(2, (0.0, 0.0, 1.0)), (5, (0.525731112119, 0.0, 0.850650808354)), (3, (0.0, 0.356822089773, 0.934172358963))],
    "I3": [
        (2, (-0.5257311143, 0.0, 0.8506508070)),
        (5, (0.0, 0.0, 1.0)),
        (3, (-0.4911234778630044, 0.3568220765, 0.7946544753)),
    ],
    "I4": [
        (2, (0.5257311143, 0.0, 0.8506508070)),
        (5, (0.8944271932547096, 0.0, 0.4472135909903704)),
        (3, (0.4911234778630044, 0.3568220765, 0.7946544753)),
    ],
}


def _generators(name: str) -> tuple[str, list[tuple[int, tuple[float, float, float]]]]:
    """Canonical name and ``[(fold, axis), ...]`` generators of a group name."""
    key = name.strip().upper() if isinstance(name, str) else ""
    m = re.fullmatch(r"([CD])([1-9][0-9]*)", key)
    if m:
        n = int(m.group(2))
        gens = [(n, (0.0, 0.0, 1.0))]
        if m.group(1) == "D":
            gens.append((2, (1.0, 0.0, 0.0)))
        return key, gens
    if key == "T":
        return key, [(3, (0.0, 0.0, 1.0)), (2, (0.0, 0.816496, 0.577350))]
    if key == "O":
        s = 1 / math.sqrt(3)
        return key, [(3, (s, s, s)), (4, (0.0, 0.0, 1.0))]
    if key == "I":
        key = "I2"
    if key in _ICOS:
        return key, _ICOS[key]
    raise InputError(f"unknown symmetry '{name}'; use C1, Cn, Dn, T, O or I (I1-I4)")


def _closure(gens: list[torch.Tensor], tol: float = 1e-4, max_order: int = 10000) -> torch.Tensor:
    """All products of the generators (float64), identity first, deduplicated with ``tol``."""
    eye = torch.eye(3, dtype=torch.float64)
    group = [eye]
    frontier = [eye]
    stack = torch.stack(group)
    while frontier:
        new = []
        for a in frontier:
            for g in gens:
                p = a @ g
                p = _polar(p)  # stop drift over long products
                if (stack - p).abs().amax(dim=(-1, -2)).min() > tol:
                    group.append(p)
                    new.append(p)
                    stack = torch.stack(group)
        if len(group) > max_order:
            raise ValueError("symmetry closure did not terminate; generators are not a finite group")
        frontier = new
    return stack


def _polar(m: torch.Tensor) -> torch.Tensor:
    u, _, vh = torch.linalg.svd(m)
    return u @ vh


def _make_exact(g: torch.Tensor, iterations: int = 3) -> torch.Tensor:
    """Nearest exact group to an approximately closed one (float64 ``(G, 3, 3)``).

    RELION's axes are printed to 6-12 digits, so its products close only to
    ~1e-7. The averaging ``g_i <- polar(mean_j g_{ij} g_jᵀ)`` (Grove-Karcher-Ruh /
    Kazhdan) squares the defect at each step and moves the elements by about
    the defect, i.e. they stay RELION's to ~1e-7.
    """
    prod = g[:, None] @ g[None]  # (G, G, 3, 3)
    table = (prod[:, :, None] - g[None, None]).abs().amax(dim=(-1, -2)).argmin(dim=-1)  # (G, G)
    for _ in range(iterations):
        g = _polar((g[table] @ g.transpose(-1, -2)[None]).mean(dim=1))
    g[0] = torch.eye(3, dtype=g.dtype)
    return g


@lru_cache(maxsize=64)
def _group64(key: str) -> torch.Tensor:
    _, gens = _generators(key)
    mats = []
    for fold, axis in gens:
        if fold == 1:
            continue
        ax = torch.tensor(axis, dtype=torch.float64)
        mats.append(axis_angle_to_matrix(ax, torch.tensor(360.0 / fold, dtype=torch.float64)))
    return _make_exact(_closure(mats))


def symmetry_matrices(name: str, *, dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
    """Rotation matrices of a point group, identity first.

    Args:
        name: ``C1``, ``Cn``, ``Dn``, ``T``, ``O``, ``I`` (= ``I2``) or ``I1``-``I4``;
            case-insensitive.
        dtype, device: of the result (the group is built in float64 on CPU).

    Returns:
        ``(G, 3, 3)`` with ``G`` = n (Cn), 2n (Dn), 12 (T), 24 (O), 60 (I).

    Raises:
        InputError: for an unknown name.
    """
    key, _ = _generators(name)
    return _group64(key).to(dtype=dtype, device=device, copy=True)  # never hand out the cache


def symmetry_order(name: str) -> int:
    """Number of elements of the group ``name``."""
    return int(_group64(_generators(name)[0]).shape[0])


def expand_poses(R: torch.Tensor, sym: str) -> torch.Tensor:
    """All poses equivalent to ``R`` under ``sym``: ``R @ g`` for each group element.

    Args:
        R: ``(..., 3, 3)`` RELION pose matrices.
        sym: group name.

    Returns:
        ``(..., G, 3, 3)``; index 0 is ``R`` itself.
    """
    g = symmetry_matrices(sym, dtype=R.dtype, device=R.device)
    return R[..., None, :, :] @ g


def _sample_grid(shape: tuple[int, int, int], R: torch.Tensor) -> torch.Tensor:
    """``(G, D, H, W, 3)`` grid_sample coordinates of ``R @ x`` about the centre ``N//2``."""
    D, H, W = shape
    dev, dt = R.device, R.dtype
    z, y, x = (torch.arange(n, device=dev, dtype=dt) - n // 2 for n in (D, H, W))
    zz, yy, xx = torch.meshgrid(z, y, x, indexing="ij")
    p = torch.stack([xx, yy, zz], dim=-1)  # (D, H, W, 3) in (x, y, z)
    q = torch.einsum("gij,dhwj->gdhwi", R, p)
    centre = torch.tensor([W // 2, H // 2, D // 2], device=dev, dtype=dt)
    size = torch.tensor([W, H, D], device=dev, dtype=dt)
    # align_corners=True: index i <-> -1 + 2 i / (n - 1)
    return (q + centre) * (2 / (size - 1).clamp(min=1)) - 1


def rotate_volume(vol: torch.Tensor, R: torch.Tensor) -> torch.Tensor:
    """Real-space rotation ``out(x) = vol(R·x)`` about the box centre, trilinear.

    Args:
        vol: ``(..., D, H, W)`` = ``(..., z, y, x)`` volumes.
        R: ``(3, 3)`` or ``(G, 3, 3)`` matrices acting on ``(x, y, z)``.

    Returns:
        ``(..., D, H, W)`` for a single ``R``, ``(G, ..., D, H, W)`` for a batch.
        Samples outside the box are 0.
    """
    single = R.ndim == 2
    Rb = R[None] if single else R
    lead, (D, H, W) = vol.shape[:-3], vol.shape[-3:]
    v = vol.reshape(1, -1, D, H, W)
    grid = _sample_grid((D, H, W), Rb.to(vol.dtype))
    out = F.grid_sample(
        v.expand(Rb.shape[0], -1, -1, -1, -1), grid, mode="bilinear", padding_mode="zeros", align_corners=True
    )
    out = out.reshape(Rb.shape[0], *lead, D, H, W)
    return out[0] if single else out


def symmetrize_volume(vol: torch.Tensor, sym: str, *, chunk: int = 8) -> torch.Tensor:
    """Average of ``vol(g·x)`` over the group: a map with ``V(g·x) = V(x)``.

    Real space, trilinear interpolation (``torch.nn.functional.grid_sample``),
    rotations about the voxel ``(N//2, N//2, N//2)``; voxels rotated from outside
    the box count as 0. Axis order: arrays are ``(z, y, x)``, the group matrices
    act on ``(x, y, z)``.

    Args:
        vol: ``(..., D, H, W)`` volumes (the same group is applied to each).
        sym: group name.
        chunk: group elements interpolated at once (memory bound).

    Returns:
        ``(..., D, H, W)``, same dtype/device as ``vol``.
    """
    g = symmetry_matrices(sym, dtype=vol.dtype, device=vol.device)
    out = torch.zeros_like(vol)
    for i in range(0, g.shape[0], chunk):
        out = out + rotate_volume(vol, g[i : i + chunk]).sum(0)
    return out / g.shape[0]


#: Help sentence of every ``--sym`` option (the rule below adds the names).
SYMMETRY_HELP = "Point group, in RELION's orientation"


def valid_symmetry(name: str) -> bool:
    """True when ``name`` is a point group cryolens knows (C1, Cn, Dn, T, O, I)."""
    try:
        symmetry_matrices(name)
    except Exception:  # noqa: BLE001 - InputError or ValueError for unknown names
        return False
    return True


#: The ``rule`` of every declared symmetry option (:func:`cryolens.params.option`).
SYMMETRY_RULE = (valid_symmetry, "C1, Cn, Dn, T, O or I")
