"""cryolens.io.images: RELION image names, path rules and the lazy ImageSource."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

import cryolens.io.images as images_module
from cryolens.errors import InputError
from cryolens.io.images import ImageSource, format_image_name, parse_image_name, write_stack_and_names
from cryolens.io.paths import PROJECT_DB, project_root, resolve_path, star_name
from cryolens.io.mrc import open_stack, read_mrc, read_mrc_header, read_sections
from cryolens.io.star import read_particles, read_star

PROJECT = "metadata/relion5_betagal_project"
EXTRACT_STAR = "Extract/job009/Movies/20170629_00021_frameImage_extract.star"
EXTRACT_STACK = "Extract/job009/Movies/20170629_00021_frameImage.mrcs"


@pytest.mark.parametrize("name, expected", [
    ("000012@Particles/stack.mrcs", (11, "Particles/stack.mrcs")),
    ("1@empiar_10076_7.mrc", (0, "empiar_10076_7.mrc")),
    ("stack.mrcs", (0, "stack.mrcs")),
    ("000003@Extract/job1/a.mrcs:mrcs", (2, "Extract/job1/a.mrcs")),
    ("CtfFind/job005/Movies/x_PS.ctf:mrc", (0, "CtfFind/job005/Movies/x_PS.ctf")),
    ("F:/frames/subtomo/t_0000000_5.00A.mrc", (0, "F:/frames/subtomo/t_0000000_5.00A.mrc")),
    ("/abs/path/s.mrcs", (0, "/abs/path/s.mrcs")),
])
def test_parse_image_name(name, expected):
    assert parse_image_name(name) == expected


@pytest.mark.parametrize("name", ["0@a.mrcs", "-3@a.mrcs", "", "12@"])
def test_parse_image_name_rejects(name):
    with pytest.raises(ValueError):
        parse_image_name(name)


_PATH_CHARS = st.sampled_from("abcXYZ019_-./")


@given(index=st.integers(min_value=0, max_value=10**7),
       path=st.text(_PATH_CHARS, min_size=1, max_size=40))
def test_image_name_round_trip(index, path):
    name = format_image_name(index, path)
    assert name.split("@")[0] == f"{index + 1:06d}"
    assert parse_image_name(name) == (index, path)


def test_resolve_path_cwd_first_then_star_folder(tmp_path, monkeypatch):
    project, star_dir = tmp_path / "project", tmp_path / "project" / "Select" / "job1"
    star_dir.mkdir(parents=True)
    star = star_dir / "particles.star"
    (project / "Extract").mkdir()
    (project / "Extract" / "s.mrcs").write_bytes(b"cwd")
    (star_dir / "Extract").mkdir()
    (star_dir / "Extract" / "s.mrcs").write_bytes(b"star")
    (star_dir / "only_here.mrcs").write_bytes(b"star")
    monkeypatch.chdir(project)
    assert resolve_path("Extract/s.mrcs", star).read_bytes() == b"cwd"
    assert resolve_path("only_here.mrcs", star) == star_dir / "only_here.mrcs"
    absolute = project / "Extract" / "s.mrcs"
    assert resolve_path(str(absolute), star) == absolute
    with pytest.raises(InputError) as err:
        resolve_path("Particles/x.mrcs", star, row=3)
    message = str(err.value)
    assert message.startswith("particles.star: stack Particles/x.mrcs (referenced by row 3) was not found in ")
    assert str(project) in message and str(star_dir) in message


def test_paths_inside_a_project_are_relative_to_its_root(tmp_path, monkeypatch):
    """Inside a project STAR names are project-relative and resolve against the root first, from any folder."""
    root, elsewhere = tmp_path / "P", tmp_path / "elsewhere"
    job = root / "Extract" / "job002"
    job.mkdir(parents=True)
    elsewhere.mkdir()
    (root / PROJECT_DB).write_bytes(b"")
    (job / "s.mrcs").write_bytes(b"root")
    (elsewhere / "Extract" / "job002").mkdir(parents=True)
    (elsewhere / "Extract" / "job002" / "s.mrcs").write_bytes(b"cwd")  # the same name under the current folder
    monkeypatch.chdir(elsewhere)
    assert project_root(job / "particles.star") == root and project_root(elsewhere) is None
    assert project_root(root / "Refine3D" / "job009") == root  # a job folder not made yet
    assert star_name(job / "s.mrcs", into=job) == "Extract/job002/s.mrcs"
    outside = tmp_path / "raw" / "m.tiff"
    assert star_name(outside, into=job) == outside.as_posix()  # outside the project: absolute
    assert star_name(elsewhere / "a.mrc") == "a.mrc"  # outside a project: the current folder's rule
    assert star_name(job / "s.mrcs") == (job / "s.mrcs").as_posix()
    assert star_name(job / "s.mrcs", up=True) == "../P/Extract/job002/s.mrcs"
    assert resolve_path("Extract/job002/s.mrcs", job / "particles.star").read_bytes() == b"root"
    assert resolve_path("Extract/job002/s.mrcs", tmp_path / "x.star").read_bytes() == b"cwd"  # no project
    moved = tmp_path / "Q"
    root.rename(moved)  # the whole project moves: its names still resolve
    assert resolve_path("Extract/job002/s.mrcs", moved / "Extract" / "job002" / "particles.star").read_bytes() == \
        b"root"


def test_image_source_empiar_star_folder_rule(shared_data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # names are relative to the STAR folder, not to cwd
    star = shared_data / "particles/empiar_10076_7/empiar_10076_7.star"
    optics, particles = read_particles(star)
    source = ImageSource(particles, star)
    stack, _ = read_mrc(shared_data / "particles/empiar_10076_7/empiar_10076_7.mrc")
    assert len(source) == 7 and source.image_size == 320 and source.image_shape == (320, 320)
    order = np.array([6, 0, 3, 3, 1])
    np.testing.assert_array_equal(source[order], stack[order])
    np.testing.assert_array_equal(source[::-2], stack[::-2])
    np.testing.assert_array_equal(source[-1], stack[6])
    np.testing.assert_array_equal(source[np.arange(7) % 2 == 0], stack[::2])
    assert source[np.array([], dtype=int)].shape == (0, 320, 320)
    seen = []
    for idx, batch in source.iter_batches(3):
        assert batch.dtype == np.float32 and len(batch) <= 3
        np.testing.assert_array_equal(batch, stack[idx])
        seen.extend(idx.tolist())
    assert seen == list(range(7))
    with pytest.raises(IndexError):
        source[np.array([7])]


def test_image_source_relion_project_cwd_rule(shared_data, tmp_path, monkeypatch):
    project = shared_data / PROJECT
    star = project / EXTRACT_STAR
    particles = read_star(star)["images"]
    monkeypatch.chdir(tmp_path)  # "Extract/job009/..." is under neither cwd nor the STAR folder, but under its ancestor
    assert ImageSource(particles, star).stack_paths == [project / EXTRACT_STACK]
    with pytest.raises(InputError, match="moved.star: stack Extract/job009/.* row 1"):
        ImageSource(particles, tmp_path / "moved.star")  # the same rows in a STAR outside the project
    monkeypatch.chdir(project)
    source = ImageSource(particles, star)
    assert len(source) == 242 and source.image_size == 64
    assert source.stack_paths == [project / EXTRACT_STACK]
    raw = np.asarray(open_stack(project / EXTRACT_STACK))  # float16 on disk
    rng = np.random.default_rng(0)
    idx = rng.permutation(242)[:50]
    images = source[idx]
    assert images.dtype == np.float32
    np.testing.assert_array_equal(images, raw[idx].astype(np.float32))


def test_image_source_groups_reads_by_stack(tmp_path, monkeypatch):
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(5, 8, 8)), rng.normal(size=(4, 8, 8))
    monkeypatch.chdir(tmp_path)
    names_a = write_stack_and_names("a.mrcs", a, 2.0)
    names_b = write_stack_and_names("b.mrcs", b, 2.0)
    assert names_a[0] == "000001@a.mrcs" and names_b[-1] == "000004@b.mrcs"
    assert read_mrc_header(tmp_path / "a.mrcs").is_stack and read_mrc_header(tmp_path / "a.mrcs").voxel_size == 2.0
    names = [names_a[4], names_b[0], names_a[0], names_b[3], names_a[2]]
    expected = np.stack([a[4], b[0], a[0], b[3], a[2]]).astype(np.float32)
    table = pd.DataFrame({"rlnImageName": names})
    source = ImageSource(table, tmp_path / "particles.star")
    calls = []
    monkeypatch.setattr(images_module, "read_sections",
                        lambda p, s, info: calls.append(p) or read_sections(p, s, info=info))
    np.testing.assert_array_equal(source[np.arange(5)], expected)
    assert len(calls) == 2  # one read per stack, not one per particle
    np.testing.assert_array_equal(source[np.array([3, 0, 3])], expected[[3, 0, 3]])


def test_image_source_validation_errors(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_stack_and_names("a.mrcs", np.zeros((3, 8, 8)), 1.0)
    write_stack_and_names("big.mrcs", np.zeros((2, 10, 10)), 1.0)
    star = tmp_path / "particles.star"

    def source(*names):
        return ImageSource(pd.DataFrame({"rlnImageName": list(names)}), star)

    with pytest.raises(InputError, match="particles.star: row 2 asks for image 4 of a.mrcs, which holds 3"):
        source("000001@a.mrcs", "000004@a.mrcs")
    with pytest.raises(InputError, match="particles.star: stack gone.mrcs \\(referenced by row 2\\) was not found"):
        source("000001@a.mrcs", "000001@gone.mrcs")
    with pytest.raises(InputError, match="different box sizes"):
        source("000001@a.mrcs", "000001@big.mrcs")
    with pytest.raises(InputError, match="whole stack a.mrcs"):
        source("a.mrcs")
    with pytest.raises(InputError, match="row 1 has an invalid image name"):
        source("000000@a.mrcs")
    with pytest.raises(InputError, match="rlnImageName is missing"):
        ImageSource(pd.DataFrame({"rlnDefocusU": [1.0]}), star)
