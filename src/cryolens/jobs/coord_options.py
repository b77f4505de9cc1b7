"""Options of ``cryolens import coords``, declared once; light to import (the CLI reads them at start-up)."""

from __future__ import annotations

from dataclasses import dataclass

from cryolens.params import Params, option

__all__ = ["COORD_FORMATS", "CoordinateFormat", "EXPORT_FORMATS", "CoordinateExport"]

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


#: The coordinate formats ``export coords`` writes (see :mod:`cryolens.jobs.coord_writers`).
EXPORT_FORMATS = ("topaz", "cistem", "cbox", "cryolo")


@dataclass
class CoordinateExport(Params):
    """How ``cryolens export coords`` writes picks (:mod:`cryolens.jobs.export_coords`)."""

    format: str | None = option(None, flag="--format", choices=EXPORT_FORMATS,
                                help="topaz (one table, stems, integer px), cistem ('micrograph x y' in Å; needs "
                                     "--micrographs), cbox (crYOLO CBOX per micrograph; needs --box) or cryolo "
                                     "(crYOLO STAR per micrograph)")
    box: float | None = option(None, unit="px", gt=0, help="--format cbox: the box size crYOLO records")
    scale: float = option(1.0, gt=0, help="Multiply the pixel coordinates (0.125 for Topaz on 8x-binned "
                                          "micrographs)")

    def check(self) -> None:
        """--format is needed; cbox needs --box; cistem (Å) takes no --scale."""
        if self.format is None:
            raise ValueError(f"{self.flag('format')} is needed: one of {', '.join(EXPORT_FORMATS)}")
        if self.format == "cbox" and self.box is None:
            raise ValueError(f"{self.flag('format')} cbox needs {self.flag('box')}: the box size crYOLO records (px)")
        if self.format == "cistem" and self.scale != 1.0:
            raise ValueError(f"{self.flag('scale')} {self.scale:g}: cisTEM positions are in Å of the micrographs "
                             "themselves; leave it out with --format cistem")
