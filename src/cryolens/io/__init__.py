"""File formats: MRC/MRCS maps and stacks, RELION STAR metadata, lazy particle images.

Units: Å for voxel/pixel sizes and shifts; arrays are ``(z, y, x)`` / ``(n, y, x)``.
Every user-fixable problem raises :class:`cryolens.errors.InputError`.
"""

from cryolens.io.images import ImageSource, format_image_name, parse_image_name, write_stack_and_names
from cryolens.io.paths import project_root, resolve_path, star_name
from cryolens.io.mrc import MrcInfo, clear_stack_cache, open_stack, read_mrc, read_mrc_header, write_mrc
from cryolens.io.star import (
    merge_optics,
    read_micrographs,
    read_particles,
    read_star,
    require_columns,
    require_finite,
    write_micrographs,
    write_particles,
    write_star,
)

__all__ = [
    "ImageSource", "MrcInfo", "clear_stack_cache", "format_image_name", "merge_optics", "open_stack",
    "parse_image_name", "project_root", "read_micrographs", "read_mrc", "read_mrc_header", "read_particles",
    "read_star", "require_columns", "require_finite", "resolve_path", "star_name", "write_micrographs", "write_mrc",
    "write_particles", "write_stack_and_names", "write_star",
]
