"""Options of ``cryolens import coords``, declared once; light to import (the CLI reads them at start-up)."""

from __future__ import annotations

from dataclasses import dataclass

from cryolens.params import Params, option

__all__ = ["COORD_FORMATS", "CoordinateFormat"]

#: The coordinate formats ``import coords`` reads (see :mod:`cryolens.jobs.coord_formats`).
COORD_FORMATS = ("auto", "relion", "cryolo", "box", "xy", "cbox", "plt", "topaz", "cistem")


@dataclass
class CoordinateFormat(Params):
    """How the coordinate files are read.

    ``auto``: by extension (``.star`` RELION or crYOLO STAR, ``.cbox`` crYOLO CBOX, ``.box``
    EMAN, ``.plt`` cisTEM's export), a Topaz table by its ``image_name x_coord y_coord`` header, else ``x y`` text in
    pixels. ``cistem`` (positions in Å, converted with the micrographs' pixel size) is read
    only when asked: its lines cannot be told apart from other text by their look.
    """

    format: str = option("auto", flag="--format", choices=COORD_FORMATS,
                         help="Coordinate format; auto reads .star (RELION, crYOLO), .cbox (crYOLO), .box (EMAN), "
                              ".plt (cisTEM), a Topaz table by its header, else 'x y' text (px); cistem "
                              "('micrograph x y' in Å) is read only when asked")
