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

import functools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from cryolens.core.fourier import freq_grid_2d, ft3, irfftn, radius_3d, shift_phase
from cryolens.core.masks import soft_mask_outside
from cryolens.core.native import insert_slices

__all__ = ["FourierVolume", "SliceGrid", "gridding_correction", "prepare_volume", "project", "sample_trilinear",
           "BackProjector", "scatter_add_complex"]


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


def sample_trilinear(table: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Trilinear samples of ``table (1, C, D, H, W)`` at ``points (..., 3)``: ``(C, ...)``.

    ``points`` are ``(x, y, z)`` in ``[-1, 1]`` (``grid_sample`` with ``align_corners=True``; zeros
    outside). Torch's 3-D ``grid_sample`` on the CPU runs in parallel over its batch axis only, so the
    points are split into one batch per intra-op thread over the same (broadcast, not copied) table:
    the same values, on every thread.
    """
    shape, C = points.shape[:-1], table.shape[1]
    pts = points.reshape(-1, 3)
    total = pts.shape[0]
    parts = min(torch.get_num_threads(), max(1, total // 4096)) if table.device.type == "cpu" else 1
    per = -(-total // parts)
    if per * parts != total:
        pts = torch.cat([pts, pts.new_zeros(per * parts - total, 3)])
    out = F.grid_sample(table.expand(parts, -1, -1, -1, -1), pts.reshape(parts, per, 1, 1, 3), mode="bilinear",
                        padding_mode="zeros", align_corners=True)  # (parts, C, per, 1, 1)
    out = out.reshape(parts, C, per).transpose(0, 1).reshape(C, parts * per)
    return out[:, :total].reshape(C, *shape)


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


def _trilinear_corners(coords: torch.Tensor, P: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Trilinear neighbours on the centred grid, all 8 corners at once (insertion).

    Returns ``(flat_index (8, B, M) long, weight (8, B, M))``, both contiguous, corners
    ordered z, y, x (x fastest). Built by broadcasting over the leading corner axis
    (long, vectorised inner loops): one add for the indices, two products for the weights.
    """
    S, nx = _centred_extent(P)
    f = torch.floor(coords)
    t = coords - f
    i = f.long()
    base = ((i[..., 2] + P // 2) * S + (i[..., 1] + P // 2)) * nx + i[..., 0]
    offsets = torch.tensor([dz * S * nx + dy * nx + dx for dz in (0, 1) for dy in (0, 1) for dx in (0, 1)],
                           device=coords.device)
    # out= pins the (8, B, M) memory order (broadcast results may otherwise come out permuted).
    index = torch.add(base, offsets[:, None, None], out=base.new_empty((8, *base.shape)))
    tx, ty, tz = t.unbind(-1)
    wz, wy, wx = (torch.stack([1 - u, u]) for u in (tz, ty, tx))
    wzy = torch.mul(wz[:, None], wy[None], out=t.new_empty((2, 2, *base.shape)))
    weight = torch.mul(wzy[:, :, None], wx[None, None], out=t.new_empty((2, 2, 2, *base.shape)))
    return index, weight.reshape(8, *base.shape)


def scatter_add_complex(dst: torch.Tensor, index: torch.Tensor, values: torch.Tensor, *,
                        native: bool | None = None) -> None:
    """``dst[index] += values`` for a 1-D complex64 ``dst`` and ``values`` shaped like ``index``.

    ``native`` (default: on the CPU) scatters the complex values in one call (real and
    imaginary parts share a cache line); otherwise the real and imaginary parts go into
    the interleaved float view of ``dst`` (the path used on GPUs).
    """
    flat = index.reshape(-1)
    if native if native is not None else dst.device.type == "cpu":
        dst.scatter_add_(0, flat, values.reshape(-1))
        return
    parts = torch.view_as_real(dst).view(-1)
    pair = (2 * flat)[:, None] + torch.arange(2, device=dst.device)
    parts.scatter_add_(0, pair.reshape(-1), torch.view_as_real(values.reshape(-1)).reshape(-1))


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
    vals = sample_trilinear(fvol.table, (coords + offset) * scale - 1.0).permute(1, 2, 0)  # (B, M, 2)
    vals = torch.stack([vals[..., 0], torch.where(conj, -vals[..., 1], vals[..., 1])], -1)
    out = torch.zeros(B, n * (n // 2 + 1), dtype=torch.complex64, device=device)
    out[:, grid.flat] = torch.view_as_complex(vals.contiguous())
    out = out.reshape(B, n, n // 2 + 1)
    if origins is not None:
        out = shift_phase(out, -origins.to(device=device, dtype=torch.float32), n)
    return out


@functools.lru_cache(maxsize=8)
def _padded_shells(n: int, pad: int, device: torch.device) -> tuple[torch.Tensor, ...]:
    """Of the padded half-volume ``(P, P, P//2+1)``: each voxel's radius in frequency units of the ``n`` box,
    the flat indices of the voxels in shells ``0..n//2``, their shells, and the voxels per shell (cached: every
    back-projector of a run has the same grid)."""
    radius = radius_3d(pad * n, device=device) / pad
    shells = torch.round(radius).long().reshape(-1)
    keep = torch.nonzero(shells < n // 2 + 1).squeeze(1)
    return radius, keep, shells[keep], torch.bincount(shells[keep], minlength=n // 2 + 1).float()


class BackProjector:
    """Accumulates CTF-weighted image transforms and CTF² weights on a padded half-volume.

    ``insert`` is the exact adjoint of :func:`project` (for the data term), with the
    kx = 0 column of each image counted once. ``reconstruct`` divides data by weights
    (plus an optional per-shell Wiener term) and applies the gridding correction.
    Memory: ``3 (P+1)² (P//2+1)`` float32 (complex data and a float weight), i.e. 102 MB at
    n = 128, pad = 2.
    """

    def __init__(self, n: int, *, pad: int = 2, device=None):
        self.n, self.pad = n, pad
        self.P = pad * n
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        S, nx = _centred_extent(self.P)
        # Centred layout (see _to_centred): CTF-weighted data (complex) and CTF² weights.
        self.data = torch.zeros(S * S * nx, dtype=torch.complex64, device=self.device)
        self.weight = torch.zeros(S * S * nx, dtype=torch.float32, device=self.device)
        self.grid = SliceGrid.build(n, self.device)
        self.count = 0
        self.chunk = 16 if self.device.type == "cpu" else 1024

    @property
    def acc(self) -> torch.Tensor:
        """The sums as one ``(3, (P+1)²·(P//2+1))`` float32 tensor: real part, imaginary part, CTF² weight
        (a copy; assigning a tensor of that shape replaces the sums, e.g. to restore a checkpoint)."""
        return torch.cat([torch.view_as_real(self.data).T, self.weight[None]])

    @acc.setter
    def acc(self, value: torch.Tensor) -> None:
        value = value.to(device=self.device, dtype=torch.float32)
        self.data = torch.complex(value[0], value[1]).contiguous()
        self.weight = value[2].clone()

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
        B = images_f.shape[0]
        f = images_f.to(dev).reshape(B, -1)[:, self.grid.flat]  # only the kept frequencies from here on
        if origins is not None:
            # The phase ramp of shift_phase, on the kept frequencies only.
            o = origins.to(device=dev, dtype=torch.float32)
            phase = (-2.0 * math.pi / self.n) * (o @ self.grid.k.T)
            f = f * torch.polar(torch.ones_like(phase), phase)
        cw = self.grid.column_weight
        if ctf is not None:
            c = ctf.to(dev).reshape(B, -1)[:, self.grid.flat]
            f = f * (c * cw)
            wgt = c * c * cw
        else:
            f = f * cw
            wgt = cw[None]
        rot = rotations.to(device=dev, dtype=torch.float32)
        if symmetry is not None and symmetry.shape[0] > 1:
            G = symmetry.shape[0]
            rot = (rot[:, None] @ symmetry.to(dev)[None]).reshape(B * G, 3, 3)
            f = f.repeat_interleave(G, 0)
            if wgt.shape[0] > 1:  # per-image CTF² (a shared weight row broadcasts as it is)
                wgt = wgt.repeat_interleave(G, 0)
        # On the CPU the C kernel of cryolens.core.native (when it builds) does the rest, ~4x faster.
        if dev.type == "cpu" and insert_slices(self.data, self.weight, self.P, self.grid.k, rot, f, wgt, self.pad):
            self.count += B
            return
        # Small chunks keep the scatter cache-friendly; a band-limited grid (few points per image) takes up to
        # 16x more images per chunk (about the points of a chunk of full-box images at n = 64).
        step = min(16 * self.chunk, max(self.chunk, (self.chunk * 1600) // max(1, self.grid.flat.numel())))
        for s in range(0, f.shape[0], step):
            coords, conj = _slice_coordinates(self.grid, rot[s:s + step], self.pad)
            fs = f[s:s + step]
            fs = torch.where(conj, fs.conj(), fs)  # points folded to kx >= 0 take the Friedel mate's conjugate
            ws = wgt if wgt.shape[0] == 1 else wgt[s:s + step]
            index, w = _trilinear_corners(coords, self.P)  # (8, b, M)
            # out= keeps the (8, b, M) memory order of index, so the reshapes below are views.
            scatter_add_complex(self.data, index, torch.mul(fs, w, out=fs.new_empty(w.shape)))
            self.weight.scatter_add_(0, index.reshape(-1), torch.mul(ws, w, out=torch.empty_like(w)).reshape(-1))
        self.count += B

    def add(self, other: "BackProjector") -> None:
        """Add another accumulator's sums (e.g. from a parallel worker)."""
        self.data += other.data.to(self.device)
        self.weight += other.weight.to(self.device)
        self.count += other.count

    def sums_at(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The complex sums and CTF² weights at flat ``index`` (copies; e.g. to ship a worker's partial sums)."""
        index = index.to(self.device)
        return self.data[index], self.weight[index]

    def add_at(self, index: torch.Tensor, data: torch.Tensor, weight: torch.Tensor) -> None:
        """Add partial sums (:meth:`sums_at` of another accumulator) at flat ``index``."""
        index = index.to(self.device)
        self.data[index] += data.to(self.device)
        self.weight[index] += weight.to(self.device)

    def _half_volumes(self):
        """Data ``(P, P, nx)`` complex and weight ``(P, P, nx)``, the kx = 0 and kx = P/2 planes made Hermitian.

        Both planes are their own Friedel mates (kx = P/2 aliases to -P/2), so each
        voxel there also receives the conjugate of what landed on its mate (-ky, -kz).
        """
        S, nx = _centred_extent(self.P)
        data = _from_centred(self.data.reshape(S, S, nx))
        weight = _from_centred(self.weight.reshape(S, S, nx))
        mate = lambda x: torch.roll(torch.flip(x, dims=(0, 1)), shifts=(1, 1), dims=(0, 1))  # noqa: E731
        for x in (0, nx - 1):
            plane_d, plane_w = data[:, :, x], weight[:, :, x]
            data[:, :, x] = plane_d + mate(plane_d).conj()
            weight[:, :, x] = plane_w + mate(plane_w)
        return data, weight

    def _radius(self) -> torch.Tensor:
        """Radius of each padded half-volume voxel in frequency units of the original box (cached)."""
        return _padded_shells(self.n, self.pad, self.device)[0]

    def shell_weights(self, weight: torch.Tensor | None = None) -> torch.Tensor:
        """Mean CTF² weight per shell of the original box (``n//2 + 1`` shells).

        ``weight``: the padded weight volume of :meth:`_half_volumes` when the caller has it already.
        """
        if weight is None:
            _, weight = self._half_volumes()
        _, keep, shells, count = _padded_shells(self.n, self.pad, self.device)
        num = torch.zeros(self.n // 2 + 1, device=self.device).index_add_(0, shells, weight.reshape(-1)[keep])
        return num / count.clamp_min(1)

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
        r = self._radius()
        inside = r < self.n / 2
        denom = weight
        if ssnr is not None:
            mean_w = self.shell_weights(weight)
            tau = (mean_w / ssnr.to(self.device).clamp_min(1e-6))
            sh = torch.round(r).long().clamp_max(self.n // 2)
            denom = denom + tau[sh]
        floor = weight_floor * weight[inside].mean().clamp_min(1e-30)
        f = data.mul_(torch.where(inside, denom.clamp_min(floor).reciprocal_(), 0.0))
        # ift3 followed by the central crop, without shifting the whole padded volume: the centred
        # index o + j (o = P//2 - n//2) is the unshifted index (j - n//2) mod P.
        vol = irfftn(f, s=(self.P,) * 3)
        keep = (torch.arange(self.n, device=self.device) - self.n // 2) % self.P
        vol = vol.index_select(0, keep).index_select(1, keep).index_select(2, keep)
        vol = vol / gridding_correction(self.n, self.pad, device=self.device)
        return soft_mask_outside(vol) if mask_corners else vol
