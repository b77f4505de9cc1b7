"""cryolens.io.star on the real RELION 3.0 / 3.1 / 5 STAR files in shared/data."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import starfile

from cryolens.errors import InputError
from cryolens.io.star import (
    merge_optics,
    read_micrographs,
    read_particles,
    read_star,
    require_columns,
    write_micrographs,
    write_particles,
    write_star,
)

META = "metadata"
BETAGAL = "metadata/relion5_betagal_project"


def test_every_star_file_reads(shared_data):
    files = sorted((shared_data / META).rglob("*.star"))
    assert len(files) >= 30
    for path in files:
        blocks = read_star(path)
        assert blocks, path
        for block in blocks.values():
            assert isinstance(block, (pd.DataFrame, dict))
    model = read_star(shared_data / META / "aspire/sample_data_model.star")
    assert set(model) >= {"model_general", "model_classes", "model_class_1"}
    assert isinstance(model["model_general"], dict)


def test_relion30_aspire_upgrade(shared_data):
    path = shared_data / META / "aspire/sample_particles_relion30.star"
    raw = read_star(path)["model_class_1"]
    optics, particles = read_particles(path)
    apix = 5.0 * 1e4 / 37369.207031  # rlnDetectorPixelSize (µm) * 1e4 / rlnMagnification
    assert len(optics) == 2 and len(particles) == 17
    assert list(optics["rlnOpticsGroup"]) == [1, 2]
    assert list(optics["rlnOpticsGroupName"]) == ["opticsGroup1", "opticsGroup2"]
    assert list(optics["rlnVoltage"]) == [300.0, 200.0]
    np.testing.assert_allclose(optics["rlnImagePixelSize"], apix, atol=1e-6)
    for gone in ("rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast", "rlnMagnification",
                 "rlnDetectorPixelSize", "rlnOriginX", "rlnOriginY"):
        assert gone not in particles.columns
    np.testing.assert_array_equal(particles["rlnOpticsGroup"], np.where(raw["rlnVoltage"] == 300, 1, 2))
    np.testing.assert_allclose(particles["rlnOriginXAngst"], raw["rlnOriginX"] * apix, atol=1e-5)
    np.testing.assert_allclose(particles["rlnOriginYAngst"], raw["rlnOriginY"] * apix, atol=1e-5)
    assert particles["rlnRandomSubset"].dtype == np.int64


def test_relion30_pfcrt_and_empiar_upgrade(shared_data):
    optics, particles = read_particles(shared_data / META / "cryodrgn/FinalRefinement-OriginalParticles-PfCRT.star")
    assert len(optics) == 1 and optics["rlnImagePixelSize"].iloc[0] == pytest.approx(1.035)
    assert optics["rlnSphericalAberration"].iloc[0] == pytest.approx(0.001)
    assert particles["rlnOriginXAngst"].iloc[0] == pytest.approx(-0.14063 * 1.035, abs=1e-6)
    assert particles["rlnImageName"].iloc[0].startswith("000001@Extract/job012/")

    optics, particles = read_particles(shared_data / "particles/empiar_10076_7/empiar_10076_7.star", image_size=320)
    assert optics["rlnImagePixelSize"].iloc[0] == pytest.approx(1.31, abs=1e-4)  # 5 µm / 38168
    assert optics["rlnImageSize"].iloc[0] == 320 and optics["rlnImageSize"].dtype == np.int64
    assert (optics[["rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast"]].iloc[0].tolist()
            == [300.0, 2.7, 0.07])
    assert particles["rlnMicrographName"].tolist() == [str(i) for i in range(1, 8)]  # names stay text
    assert (particles["rlnOpticsGroup"] == 1).all()


def test_relion30_without_pixel_size(shared_data):
    path = shared_data / BETAGAL / "Extract/job009/Movies/20170629_00021_frameImage_extract.star"
    with pytest.raises(InputError, match="frameImage_extract.star: no pixel size"):
        read_particles(path)
    optics, particles = read_particles(path, pixel_size=3.54)
    assert optics["rlnImagePixelSize"].tolist() == [3.54] and len(particles) == 242


def test_block_order_does_not_matter(shared_data):
    o1, p1 = read_particles(shared_data / META / "cryodrgn/relion31.star")
    o2, p2 = read_particles(shared_data / META / "cryodrgn/relion31.v2.star")
    pd.testing.assert_frame_equal(o1, o2)
    pd.testing.assert_frame_equal(p1, p2)
    assert o1["rlnImagePixelSize"].iloc[0] == pytest.approx(2.806) and o1["rlnImageSize"].iloc[0] == 256


def test_six_optics_groups_merge(shared_data):
    optics, particles = read_particles(shared_data / META / "cryodrgn/relion31.6opticsgroups.star")
    assert len(optics) == 6 and len(particles) == 139
    merged = merge_optics(optics, particles)
    assert len(merged) == 139 and merged.index.equals(particles.index)
    lookup = optics.set_index("rlnOpticsGroup")
    for column in ("rlnImagePixelSize", "rlnSphericalAberration", "rlnVoltage", "rlnOpticsGroupName"):
        expected = lookup.loc[particles["rlnOpticsGroup"], column].to_numpy()
        np.testing.assert_array_equal(merged[column].to_numpy(), expected)
    assert set(merged["rlnSphericalAberration"]) == {2.6, 2.7}


def test_merge_optics_rejects_unknown_group(shared_data):
    optics, particles = read_particles(shared_data / META / "cryodrgn/relion31.star")
    particles = particles.assign(rlnOpticsGroup=7)
    with pytest.raises(InputError, match="7"):
        merge_optics(optics, particles)


def test_read_micrographs(shared_data):
    optics, mics = read_micrographs(shared_data / BETAGAL / "CtfFind/job005/micrographs_ctf.star")
    assert len(mics) == 24 and optics["rlnMicrographPixelSize"].iloc[0] == pytest.approx(0.885)
    assert mics["rlnDefocusU"].iloc[0] == pytest.approx(37034.929688)
    optics, movies = read_micrographs(shared_data / BETAGAL / "Import/job001/movies.star")
    assert len(movies) == 24 and optics["rlnMicrographPixelSize"].iloc[0] == pytest.approx(0.885)
    assert optics["rlnVoltage"].iloc[0] == 200.0
    with pytest.raises(InputError, match="rlnMicrographPixelSize"):
        read_micrographs(shared_data / META / "cryodrgn/relion31.star")


@pytest.mark.parametrize("rel", [
    "aspire/sample_particles_relion30.star", "aspire/sample_particles_relion31.star",
    "cryodrgn/FinalRefinement-OriginalParticles-PfCRT.star", "cryodrgn/relion31.6opticsgroups.star",
    "cryodrgn/relion5.star",
])
def test_particles_round_trip(shared_data, tmp_path, rel):
    optics, particles = read_particles(shared_data / META / rel)
    out = tmp_path / "particles.star"
    write_particles(out, optics, particles)
    o2, p2 = read_particles(out)
    pd.testing.assert_frame_equal(optics, o2)
    pd.testing.assert_frame_equal(particles, p2)
    text = out.read_text()
    assert text.index("data_optics") < text.index("data_particles")
    assert text.count("# version 30001\n\ndata_") == 2
    raw = starfile.read(out, always_dict=True)  # plain parser sees integers, not 1.000000
    assert raw["optics"]["rlnOpticsGroup"].dtype == np.int64
    assert raw["particles"]["rlnOpticsGroup"].dtype == np.int64
    assert [p.name for p in tmp_path.iterdir()] == ["particles.star"]


def test_micrographs_and_raw_blocks_round_trip(shared_data, tmp_path):
    optics, mics = read_micrographs(shared_data / BETAGAL / "MotionCorr/job002/corrected_micrographs.star")
    write_micrographs(tmp_path / "micrographs.star", optics, mics)
    o2, m2 = read_micrographs(tmp_path / "micrographs.star")
    pd.testing.assert_frame_equal(optics, o2)
    pd.testing.assert_frame_equal(mics, m2)
    blocks = read_star(shared_data / META / "starfile/postprocess.star")
    write_star(tmp_path / "postprocess.star", blocks)
    back = read_star(tmp_path / "postprocess.star")
    assert back["general"] == blocks["general"]
    pd.testing.assert_frame_equal(back["fsc"], blocks["fsc"])


def test_float_precision_and_int_columns(tmp_path):
    df = pd.DataFrame({
        "rlnImageName": ["000001@a.mrcs", "000002@a.mrcs"],
        "rlnAngleRot": np.array([0.1, -179.123456789], dtype=np.float32),
        "rlnLogLikeliContribution": [1.2345678901234e-7, 2.5e11],
        "rlnClassNumber": [1.0, 3.0],
        "rlnRandomSubset": [1, 2],
        "rlnOpticsGroup": [1, 1],
    })
    optics = pd.DataFrame({"rlnOpticsGroup": [1], "rlnImagePixelSize": [1.5]})
    write_particles(tmp_path / "p.star", optics, df)
    o2, p2 = read_particles(tmp_path / "p.star")
    assert o2["rlnOpticsGroupName"].tolist() == ["opticsGroup1"]
    assert p2["rlnAngleRot"].tolist() == [0.1, -179.12346]  # float32 written as its shortest text
    assert p2["rlnLogLikeliContribution"].tolist() == [1.2345678901234e-7, 2.5e11]
    assert p2["rlnClassNumber"].dtype == np.int64 and p2["rlnClassNumber"].tolist() == [1, 3]


def test_require_columns_and_missing_pixel_size(shared_data, tmp_path):
    _, particles = read_particles(shared_data / META / "cryodrgn/relion31.star")
    require_columns(particles, ["rlnImageName", "rlnDefocusU"], "particles.star", "particles")
    with pytest.raises(InputError, match=r"particles.star: column rlnFooBar is missing from data_particles"):
        require_columns(particles, ["rlnImageName", "rlnFooBar"], "particles.star", "particles")
    with pytest.raises(InputError, match="rlnA, rlnB"):
        require_columns(particles, ["rlnA", "rlnB"], "particles.star", "particles")
    blocks = read_star(shared_data / META / "cryodrgn/relion31.star")
    write_star(tmp_path / "nopix.star", {"optics": blocks["optics"].drop(columns=["rlnImagePixelSize"]),
                                         "particles": blocks["particles"]})
    with pytest.raises(InputError, match="nopix.star: column rlnImagePixelSize is missing from data_optics"):
        read_particles(tmp_path / "nopix.star")
    write_star(tmp_path / "badgroup.star", {"optics": blocks["optics"],
                                            "particles": blocks["particles"].assign(rlnOpticsGroup=4)})
    with pytest.raises(InputError, match="badgroup.star: .*optics group"):
        read_particles(tmp_path / "badgroup.star")


def test_read_star_errors(shared_data, tmp_path):
    with pytest.raises(InputError, match="absent.star: file not found"):
        read_star(tmp_path / "absent.star")
    junk = tmp_path / "junk.star"
    junk.write_bytes(np.random.default_rng(2).integers(0, 256, 2000, dtype=np.uint8).tobytes())
    with pytest.raises(InputError, match="junk.star"):
        read_star(junk)
    ragged = tmp_path / "ragged.star"
    ragged.write_text("data_particles\n\nloop_\n_rlnImageName #1\n_rlnDefocusU #2\n1@a.mrcs 1000\n2@a.mrcs 1 2 3\n")
    with pytest.raises(InputError, match="ragged.star"):
        read_star(ragged)
    with pytest.raises(InputError, match="run_it025_model.star: no data_particles table"):
        read_particles(shared_data / BETAGAL / "Class2D/job010/run_it025_model.star")
