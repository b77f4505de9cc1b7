"""Central-slice projection and back-projection on a padded rfft half-volume.

Conventions (pinned against ``relion_project`` / ``relion_reconstruct`` in tests):

* A pose is RELION's matrix ``A`` (:func:`cryolens.core.rotations.euler_to_matrix`); the
  projection is ``image(r) = ∫ V(Aᵀ (x, y, z)) dz``, so the 2-D frequency ``(kx, ky)``
  samples the volume's transform at ``Aᵀ (kx, ky, 0)``.
* Origins are RELION's ``rlnOriginX/Y`` in *pixels*: the recorded image is the
  projection moved by ``-origin`` (``image(r) = P(r + origin)``).
* The volume's transform is stored unshifted (DC at index 0) on a grid padded by
  ``pad`` (>= 2), last axis halved; frequencies with ``kx < 0`` are read from their
  Friedel mate. Interpolation is trilinear; its real-space apodisation (separable
  ``sinc²(x / (pad·n))``) is divided out of the volume before projection
  (gridding pre-correction) and out of reconstructions afterwards.
* Only frequencies with radius < n/2 are projected or inserted.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from cryolens.core.fourier import freq_grid_2d, ft3, ift3, radius_3d, shift_phase
from cryolens.core.masks import soft_mask_outside

__all__ = ["FourierVolume", "SliceGrid", "gridding_correction", "prepare_volume", "project",
           "BackProjector"]


def gridding_correction(n: int, pad: int, *, device=None) -> torch.Tensor:
    """Real-space apodisation of trilinear Fourier interpolation, ``(n, n, n)``.

    Separable product of ``sinc²(x / (pad·n))`` with ``x`` the voxel offset from the
    centre ``n // 2`` (normalised sinc).
    """
    x = (torch.arange(n, device=device, dtype=torch.float32) - n // 2) / (pad * n)
    s = torch.sinc(x) ** 2
    return s[:, None, None] * s[None, :, None] * s[None, None, :]


def _centred_extent(P: int) -> tuple[int, int]:
    """Extent of the centred z/y axes (one extra periodic plane) and of the half x axis."""
    return P + 1, P // 2 + 1


def _to_centred(half: torch.Tensor) -> torch.Tensor:
    """DC-at-0 half volume ``(P, P, nx, ...)`` -> centred ``(P+1, P+1, nx, ...)`` (k = index - P/2).

    The extra last z/y plane repeats the first (k = +P/2 is k = -P/2), so that the
    upper trilinear neighbour of any in-sphere point is addressable without wrapping.
    """
    P = half.shape[0]
    c = torch.roll(half, shifts=(P // 2, P // 2), dims=(0, 1))
    c = torch.cat([c, c[:1]], dim=0)
    return torch.cat([c, c[:, :1]], dim=1)


def _from_centred(c: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`_to_centred` for accumulators ``(P+1, P+1, nx)``: extra planes added back periodically."""
    P = c.shape[0] - 1
    c = c.clone()
    c[0] += c[P]
    c[:, 0] += c[:, P]
    return torch.roll(c[:P, :P], shifts=(-(P // 2), -(P // 2)), dims=(0, 1))


@dataclass
class FourierVolume:
    """A volume's padded rfft ``(P, P, P//2+1)`` (DC at index 0) with ``P = pad·n``, ready for slicing.

    A centred copy with one extra periodic plane (``table``) is built once for fast
    trilinear gathers.
    """

    data: torch.Tensor
    n: int
    pad: int

    def __post_init__(self) -> None:
        # (1, 2, z, y, x) real/imag channels for torch's trilinear grid_sample.
        self.table = torch.view_as_real(_to_centred(self.data)).permute(3, 0, 1, 2).contiguous()[None]

    @property
    def size(self) -> int:
        return self.n * self.pad


def prepare_volume(volume: torch.Tensor, *, pad: int = 2) -> FourierVolume:
    """Gridding-pre-correct, zero-pad and Fourier transform a cubic volume (centre n//2)."""
    n = volume.shape[-1]
    if volume.shape != (n, n, n):
        raise ValueError(f"expected a cubic volume, got shape {tuple(volume.shape)}")
    P = pad * n
    v = volume.to(torch.float32) / gridding_correction(n, pad, device=volume.device)
    padded = torch.zeros((P, P, P), dtype=torch.float32, device=volume.device)
    o = P // 2 - n // 2
    padded[o:o + n, o:o + n, o:o + n] = v
    return FourierVolume(ft3(padded), n, pad)


@dataclass
class SliceGrid:
    """The 2-D rfft frequencies a slice carries: those with radius < n/2.

    Attributes:
        n: box size; k: ``(M, 2)`` float ``(kx, ky)`` in cycles per box;
        flat: ``(M,)`` indices into a flattened ``(n, n//2+1)`` image;
        column_weight: ``(M,)`` 0.5 on the kx = 0 column (each of its Friedel pairs is
        present twice in the half plane) and 1 elsewhere, used when inserting.
    """

    n: int
    k: torch.Tensor
    flat: torch.Tensor
    column_weight: torch.Tensor

    @classmethod
    def build(cls, n: int, device=None) -> "SliceGrid":
        ky, kx = freq_grid_2d(n, device=device)
        keep = (kx * kx + ky * ky) < (n / 2) ** 2
        flat = torch.nonzero(keep.reshape(-1)).squeeze(1)
        k = torch.stack([kx.reshape(-1)[flat], ky.reshape(-1)[flat]], dim=1)
        cw = torch.where(k[:, 0] == 0, 0.5, 1.0).to(torch.float32)
        return cls(n, k, flat, cw)


def _slice_coordinates(grid: SliceGrid, rotations: torch.Tensor, pad: int):
    """3-D padded-grid coordinates of the slice for each pose, folded to kx >= 0.

    Returns ``(coords (B, M, 3) as (x, y, z), conj (B, M) bool)``.
    """
    # (A^T k)_j = sum_i A[i, j] k_i for k = (kx, ky, 0): rows 0 and 1 of A.
    c = torch.einsum("mi,bij->bmj", grid.k, rotations[:, :2, :].to(grid.k.dtype)) * pad
    conj = c[..., 0] < 0
    c = torch.where(conj[..., None], -c, c)
    return c, conj


def _trilinear_corners(coords: torch.Tensor, P: int):
    """Trilinear neighbours on the centred grid, one corner at a time (insertion).

    Yields ``(flat_index (B, M), weight (B, M))`` for the 8 corners; never builds
    ``(B, M, 8)`` tensors, which keeps insertion memory-light and fast.
    """
    S, nx = _centred_extent(P)
    f = torch.floor(coords)
    t = coords - f
    i = f.long()
    base = ((i[..., 2] + P // 2) * S + (i[..., 1] + P // 2)) * nx + i[..., 0]
    tx, ty, tz = t.unbind(-1)
    for dz, wz in ((0, 1 - tz), (1, tz)):
        for dy, wy in ((0, 1 - ty), (1, ty)):
            wzy = wz * wy
            for dx, wx in ((0, 1 - tx), (1, tx)):
                yield base + (dz * S * nx + dy * nx + dx), wzy * wx


def project(fvol: FourierVolume, rotations: torch.Tensor, origins: torch.Tensor | None = None,
            *, grid: SliceGrid | None = None) -> torch.Tensor:
    """Central slices of a prepared volume for a batch of poses.

    Args:
        fvol: from :func:`prepare_volume`.
        rotations: ``(B, 3, 3)`` RELION matrices.
        origins: ``(B, 2)`` RELION origins ``(x, y)`` in pixels, or ``None``.
        grid: a cached :class:`SliceGrid` for ``fvol.n`` (built when ``None``).

    Returns:
        ``(B, n, n//2+1)`` complex64 transforms of the projection images (layout of
        :func:`cryolens.core.fourier.ft2`); ``ift2`` gives images centred at n//2.
    """
    n, P = fvol.n, fvol.size
    device = fvol.data.device
    grid = grid if grid is not None else SliceGrid.build(n, device)
    B = rotations.shape[0]
    coords, conj = _slice_coordinates(grid, rotations.to(device), fvol.pad)
    # Trilinear interpolation by grid_sample on the centred table (align_corners: index <-> [-1, 1]).
    S, nx = _centred_extent(P)
    scale = coords.new_tensor([2.0 / (nx - 1), 2.0 / (S - 1), 2.0 / (S - 1)])
    offset = coords.new_tensor([0.0, P // 2, P // 2])
    g = ((coords + offset) * scale - 1.0)[None, :, :, None, :]  # (1, B, M, 1, 3) as (x, y, z)
    vals = F.grid_sample(fvol.table, g, mode="bilinear", padding_mode="zeros", align_corners=True)
    vals = vals[0, :, :, :, 0].permute(1, 2, 0)  # (B, M, 2)
    vals = torch.stack([vals[..., 0], torch.where(conj, -vals[..., 1], vals[..., 1])], -1)
    out = torch.zeros(B, n * (n // 2 + 1), dtype=torch.complex64, device=device)
    out[:, grid.flat] = torch.view_as_complex(vals.contiguous())
    out = out.reshape(B, n, n // 2 + 1)
    if origins is not None:
        out = shift_phase(out, -origins.to(device=device, dtype=torch.float32), n)
    return out


class BackProjector:
    """Accumulates CTF-weighted image transforms and CTF² weights on a padded half-volume.

    ``insert`` is the exact adjoint of :func:`project` (for the data term), with the
    kx = 0 column of each image counted once. ``reconstruct`` divides data by weights
    (plus an optional per-shell Wiener term) and applies the gridding correction.
    Memory: ``3 (P+1)² (P//2+1)`` float32, i.e. 102 MB at n = 128, pad = 2.
    """

    def __init__(self, n: int, *, pad: int = 2, device=None):
        self.n, self.pad = n, pad
        self.P = pad * n
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        S, nx = _centred_extent(self.P)
        # Rows: real part, imaginary part, CTF² weight; centred layout (see _to_centred).
        self.acc = torch.zeros(3, S * S * nx, device=self.device)
        self.grid = SliceGrid.build(n, self.device)
        self.count = 0
        self.chunk = 32 if self.device.type == "cpu" else 1024

    def insert(self, images_f: torch.Tensor, rotations: torch.Tensor, origins: torch.Tensor | None = None,
               ctf: torch.Tensor | None = None, *, symmetry: torch.Tensor | None = None) -> None:
        """Insert a batch of image transforms.

        Args:
            images_f: ``(B, n, n//2+1)`` transforms (:func:`cryolens.core.fourier.ft2`).
            rotations: ``(B, 3, 3)`` RELION matrices; origins: ``(B, 2)`` pixels or None.
            ctf: ``(B, n, n//2+1)`` CTF values, or None for CTF = 1.
            symmetry: ``(G, 3, 3)`` group matrices; each image is inserted at ``A·g``
                for every ``g`` (symmetry expansion during insertion).
        """
        dev = self.device
        f = images_f.to(dev)
        if origins is not None:
            f = shift_phase(f, origins.to(device=dev, dtype=torch.float32), self.n)
        B = f.shape[0]
        f = f.reshape(B, -1)[:, self.grid.flat]
        cw = self.grid.column_weight
        if ctf is not None:
            c = ctf.to(dev).reshape(B, -1)[:, self.grid.flat]
            f = f * c
            wgt = c * c * cw
        else:
            wgt = cw[None]
        f = f * cw
        rot = rotations.to(device=dev, dtype=torch.float32)
        if symmetry is not None and symmetry.shape[0] > 1:
            G = symmetry.shape[0]
            rot = (rot[:, None] @ symmetry.to(dev)[None]).reshape(B * G, 3, 3)
            f = f.repeat_interleave(G, 0)
            if wgt.shape[0] > 1:  # per-image CTF² (a shared weight row broadcasts as it is)
                wgt = wgt.repeat_interleave(G, 0)
        for s in range(0, f.shape[0], self.chunk):  # small chunks keep the scatter cache-friendly
            coords, conj = _slice_coordinates(self.grid, rot[s:s + self.chunk], self.pad)
            fs = f[s:s + self.chunk]
            ws = wgt if wgt.shape[0] == 1 else wgt[s:s + self.chunk]
            vals = (fs.real, torch.where(conj, -fs.imag, fs.imag), ws.expand_as(conj))
            for idx, w in _trilinear_corners(coords, self.P):
                flat = idx.reshape(-1)
                for row, v in zip(self.acc, vals):  # 1-D scatter_add_: the fastest CPU path
                    row.scatter_add_(0, flat, (v * w).reshape(-1))
        self.count += B

    def add(self, other: "BackProjector") -> None:
        """Add another accumulator's sums (e.g. from a parallel worker)."""
        self.acc += other.acc.to(self.device)
        self.count += other.count

    def _half_volumes(self):
        """Data ``(P, P, nx)`` complex and weight ``(P, P, nx)``, the kx = 0 and kx = P/2 planes made Hermitian.

        Both planes are their own Friedel mates (kx = P/2 aliases to -P/2), so each
        voxel there also receives the conjugate of what landed on its mate (-ky, -kz).
        """
        S, nx = _centred_extent(self.P)
        re, im, weight = (_from_centred(row.reshape(S, S, nx)) for row in self.acc)
        data = torch.complex(re, im)
        mate = lambda x: torch.roll(torch.flip(x, dims=(0, 1)), shifts=(1, 1), dims=(0, 1))  # noqa: E731
        for x in (0, nx - 1):
            plane_d, plane_w = data[:, :, x], weight[:, :, x]
            data[:, :, x] = plane_d + mate(plane_d).conj()
            weight[:, :, x] = plane_w + mate(plane_w)
        return data, weight

    def shell_weights(self, weight: torch.Tensor | None = None) -> torch.Tensor:
        """Mean CTF² weight per shell of the original box (``n//2 + 1`` shells).

        ``weight``: the padded weight volume of :meth:`_half_volumes` when the caller has it already.
        """
        if weight is None:
            _, weight = self._half_volumes()
        r = radius_3d(self.P, device=self.device) / self.pad
        shells = torch.round(r).long()
        nsh = self.n // 2 + 1
        keep = shells < nsh
        num = torch.zeros(nsh, device=self.device).index_add_(0, shells[keep], weight[keep])
        den = torch.zeros(nsh, device=self.device).index_add_(0, shells[keep], torch.ones_like(weight[keep]))
        return num / den.clamp_min(1)

    def reconstruct(self, *, ssnr: torch.Tensor | None = None, weight_floor: float = 1e-3,
                    mask_corners: bool = True) -> torch.Tensor:
        """Reconstruct the ``(n, n, n)`` real-space map (centre n//2).

        Args:
            ssnr: optional spectral SNR of the accumulated data per shell of the
                original box (``n//2+1`` values, e.g. ``2·FSC/(1-FSC)`` for a full map
                from half-map FSCs). When given, the Wiener term
                ``mean_shell(W) / SSNR`` is added to the weights.
            weight_floor: weights below this fraction of the mean weight inside the
                sphere are raised to it, so that sparsely sampled voxels do not blow up.
            mask_corners: replace the box corners beyond radius n/2 by the background
                mean with a 3-px cosine edge, as RELION does to every reconstruction.
        """
        data, weight = self._half_volumes()
        r = radius_3d(self.P, device=self.device) / self.pad
        inside = r < self.n / 2
        denom = weight.clone()
        if ssnr is not None:
            mean_w = self.shell_weights(weight)
            tau = (mean_w / ssnr.to(self.device).clamp_min(1e-6))
            sh = torch.round(r).long().clamp_max(self.n // 2)
            denom = denom + tau[sh]
        floor = weight_floor * weight[inside].mean().clamp_min(1e-30)
        f = torch.where(inside, data / denom.clamp_min(floor), torch.zeros_like(data))
        vol = ift3(f, self.P)
        o = self.P // 2 - self.n // 2
        vol = vol[o:o + self.n, o:o + self.n, o:o + self.n]
        vol = vol / gridding_correction(self.n, self.pad, device=self.device)
        return soft_mask_outside(vol) if mask_corners else vol
