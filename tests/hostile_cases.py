"""The hostile-input cases of every command (tests/test_hostile.py runs them).

``ROWS`` maps each command (its words, e.g. ``"import particles"``) to its cases; a case is
a command line run in the shared input folder (see ``hostile_world``; ``{out}`` is a fresh
folder) and the words the one-sentence error must hold: the file or the flag at fault.
"""

from __future__ import annotations

import os
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest

from hostile_world import COORDS, MAPS, MICS, MOVIES, PARTICLE_STAR, POSES

__all__ = ["Case", "ROWS", "PENDING", "CASES", "command_names"]


@dataclass(frozen=True)
class Case:
    """``cryolens ARGS`` (``{out}``: a fresh folder) must fail with a sentence holding ``names``."""

    command: str
    id: str
    args: tuple[str, ...]
    names: tuple[str, ...]
    marks: tuple = ()


def C(id: str, line: str, *names: str, marks: tuple = ()) -> tuple:  # noqa: N802 - a table row
    return id, line, names, marks


def _ids(table: dict[str, str]) -> list[tuple[str, str]]:
    return [(Path(k).stem, k) for k in table]


EXTRACT_COORDS = {f"m_{t}": f"bad/c_on_{t}.star" for t in ("trunc", "nan", "apix2", "small", "missing")}
SP = "--in sp/particles.star"
MAP1 = "rec/half1.mrc"
MAP2 = "rec/half2.mrc"
OUT = "--out {out}"
REC = "--in sp/particles.star --ref sp/truth_map.mrc"
MICS_OK = "--in sm/micrographs.star"
EXTRACT = "--in sm/coords.star --micrographs sm/micrographs.star"
ACQ = "--pixel-size 4 --voltage 300 --cs 2.7 --amplitude-contrast 0.1"
#: cryoSPARC .cs files (hostile_world) -> what the sentence names.
CS_FILES = {"bad/cs_text.cs": "cs_text.cs", "bad/cs_empty.cs": "cs_empty.cs", "bad/cs_trunc.cs": "cs_trunc.cs",
            "bad/gone.cs": "gone.cs", "bad/cs_no_ctf.cs": "cs_no_ctf.cs", "bad/cs_zero_rows.cs": "cs_zero_rows.cs",
            "bad/cs_missing_stack.cs": "gone.mrcs", "bad/cs_nan.cs": "ctf/df1_A", "bad/cs_index.cs": "cs_index.cs",
            "bad/cs_rect.cs": "blob/shape", "bad/cs_apix.cs": "blob/psize_A", "bad/cs_voltage.cs": "ctf/accel_kv"}
CS_4K = str(Path(__file__).resolve().parents[2] / "shared" / "data" / "metadata" / "cryosparc" / "4k_dataset.cs")
#: A folder nobody can create, not even root (sysfs refuses new directories): the unwritable-folder case.
UNWRITABLE = "/sys/cryolens-unwritable"


def _refused(folder: str) -> bool:
    try:
        os.mkdir(folder)
    except OSError:
        return True
    os.rmdir(folder)
    return False


NO_WRITE = (pytest.mark.skipif(not _refused(UNWRITABLE), reason=f"{UNWRITABLE} can be created here"),)

ROWS: dict[str, list[tuple]] = {
    "motion": [
        *(C(f"in-{i}", f"motion --in {f} {OUT}", name) for (i, f), name in zip(_ids(MOVIES), MOVIES.values())),
        C("gain-trunc", f"motion --in smv/movies.star --gain bad/trunc.mrc {OUT}", "trunc.mrc"),
        C("gain-shape", f"motion --in smv/movies.star --gain bad/gain_shape.mrc {OUT}", "gain_shape.mrc"),
        C("gain-nan", f"motion --in smv/movies.star --gain bad/gain_nan.mrc {OUT}", "gain_nan.mrc"),
        C("defect-garbage", f"motion --in smv/movies.star --defect bad/garbage.txt {OUT}", "garbage.txt"),
        C("first-frame-0", f"motion --in smv/movies.star --first-frame 0 {OUT}", "--first-frame"),
        C("first-frame-past-end", f"motion --in smv/movies.star --first-frame 9 {OUT}", "--first-frame"),
        C("frames-reversed", f"motion --in smv/movies.star --first-frame 3 --last-frame 2 {OUT}", "--last-frame"),
        C("bin-0", f"motion --in smv/movies.star --bin 0 {OUT}", "--bin"),
        C("bin-text", f"motion --in smv/movies.star --bin two {OUT}", "--bin"),
        C("patches-0", f"motion --in smv/movies.star --patches 0x0 {OUT}", "--patches"),
        C("patches-text", f"motion --in smv/movies.star --patches many {OUT}", "--patches"),
        C("dose-negative", f"motion --in smv/movies.star --dose-per-frame -1 {OUT}", "--dose-per-frame"),
        C("max-shift-0", f"motion --in smv/movies.star --max-shift 0 {OUT}", "--max-shift"),
        C("j-0", f"motion --in smv/movies.star --j 0 {OUT}", "--j"),
        C("backend-bad", f"motion --in smv/movies.star --backend warp:9 {OUT}", "warp:9"),
        C("device-bad", f"motion --in smv/movies.star --device tpu {OUT}", "tpu"),
    ],
    "ctf": [
        *(C(f"in-{i}", f"ctf --in {f} {OUT}", name) for (i, f), name in zip(_ids(MICS), MICS.values())
          if i not in ("m_small",)),
        C("all-zero-micrograph", f"ctf --in bad/m_zero.star {OUT}", "mic_zero.mrc"),
        C("box-odd", f"ctf {MICS_OK} --box 65 {OUT}", "--box"),
        C("box-small", f"ctf {MICS_OK} --box 32 {OUT}", "--box"),
        C("box-huge", f"ctf {MICS_OK} --box 4096 {OUT}", "--box"),
        C("box-negative", f"ctf {MICS_OK} --box -64 {OUT}", "--box"),
        C("res-reversed", f"ctf {MICS_OK} --res 5 30 {OUT}", "--res"),
        C("res-zero", f"ctf {MICS_OK} --res 30 0 {OUT}", "--res"),
        C("defocus-reversed", f"ctf {MICS_OK} --defocus 30000 5000 {OUT}", "--defocus"),
        C("defocus-negative", f"ctf {MICS_OK} --defocus -5000 5000 {OUT}", "--defocus"),
        C("overlap-1", f"ctf {MICS_OK} --overlap 1 {OUT}", "--overlap"),
        C("search-bad", f"ctf {MICS_OK} --search slow {OUT}", "--search"),
        C("patches-bad", f"ctf {MICS_OK} --patches 5y5 {OUT}", "--patches"),
        C("no-input", f"ctf {OUT}", "--in"),
        C("ps-trunc", f"ctf --power-spectrum bad/trunc.mrc {OUT}", "trunc.mrc"),
        C("ps-nan", f"ctf --power-spectrum bad/nan.mrc {OUT}", "nan.mrc"),
        C("ps-rect", f"ctf --power-spectrum bad/ps_rect.mrc {OUT}", "ps_rect.mrc"),
        C("ps-apix0", f"ctf --power-spectrum bad/apix0.mrc {OUT}", "apix0.mrc"),
    ],
    "pick": [
        *(C(f"in-{i}", f"pick --in {f} --diameter 100 {OUT}", name) for (i, f), name in zip(_ids(MICS), MICS.values())
          if i not in ("m_small",)),
        C("diameter-0", f"pick {MICS_OK} --diameter 0 {OUT}", "--diameter"),
        C("diameter-negative", f"pick {MICS_OK} --diameter -100 {OUT}", "--diameter"),
        C("diameter-huge", f"pick {MICS_OK} --diameter 100000 {OUT}", "--diameter"),
        C("diameter-text", f"pick {MICS_OK} --diameter big {OUT}", "--diameter"),
        C("diameter-range-reversed", f"pick {MICS_OK} --diameter 120 --diameter-max 60 {OUT}", "--diameter-max"),
        C("method-bad", f"pick {MICS_OK} --diameter 100 --method guess {OUT}", "--method"),
        C("templates-trunc", f"pick {MICS_OK} --diameter 100 --method template --templates bad/trunc.mrcs {OUT}",
          "trunc.mrcs"),
        C("templates-nan", f"pick {MICS_OK} --diameter 100 --method template --templates bad/nan.mrcs {OUT}",
          "nan.mrcs"),
        C("map-nan", f"pick {MICS_OK} --diameter 100 --method template --map bad/nan.mrc {OUT}", "nan.mrc"),
        C("map-missing", f"pick {MICS_OK} --diameter 100 --method template --map bad/gone.mrc {OUT}", "gone.mrc"),
        C("template-without-templates", f"pick {MICS_OK} --diameter 100 --method template {OUT}", "--templates"),
        C("rethreshold-not-a-job", f"pick --rethreshold unrelated --threshold 3 {OUT}", "unrelated"),
        C("preview-unknown", f"pick {MICS_OK} --diameter 100 --preview nope.mrc {OUT}", "nope.mrc"),
        C("max-per-mic-0", f"pick {MICS_OK} --diameter 100 --max-per-micrograph 0 {OUT}", "--max-per-micrograph"),
    ],
    "pick-consensus": [
        C("one-set", f"pick-consensus --in sm/coords.star --radius 5 {OUT}", "--in"),
        *(C(f"in-{i}", f"pick-consensus --in sm/coords.star --in {f} --radius 5 {OUT}", name)
          for (i, f), name in zip(_ids(COORDS), COORDS.values())),
        C("radius-negative", f"pick-consensus --in sm/coords.star --in sm/coords.star --radius -5 {OUT}", "--radius"),
        C("min-agree-0", f"pick-consensus --in sm/coords.star --in sm/coords.star --radius 5 --min-agree 0 {OUT}",
          "--min-agree"),
        C("min-agree-too-many", f"pick-consensus --in sm/coords.star --in sm/coords.star --radius 5 --min-agree 3 "
          f"{OUT}",
          "--min-agree"),
    ],
    "extract": [
        *(C(f"coords-{i}", f"extract --in {f} --micrographs sm/micrographs.star --box 32 {OUT}", name)
          for (i, f), name in zip(_ids(COORDS), COORDS.values())),
        *(C(f"mics-{i}", f"extract --in {EXTRACT_COORDS.get(i, 'sm/coords.star')} --micrographs {f} --box 32 {OUT}",
            name) for (i, f), name in zip(_ids(MICS), MICS.values())),
        C("mics-no-ctf-phase-flip", f"extract {EXTRACT} --micrographs bad/m_no_ctf.star --box 32 --phase-flip {OUT}",
          "rlnDefocusU"),
        C("box-0", f"extract {EXTRACT} --box 0 {OUT}", "--box"),
        C("box-odd", f"extract {EXTRACT} --box 33 {OUT}", "--box"),
        C("box-negative", f"extract {EXTRACT} --box -32 {OUT}", "--box"),
        C("box-huge", f"extract {EXTRACT} --box 100000 {OUT}", "--box"),
        C("box-text", f"extract {EXTRACT} --box wide {OUT}", "--box"),
        C("bin-to-0", f"extract {EXTRACT} --box 32 --bin-to 0 {OUT}", "--bin-to"),
        C("bin-to-larger", f"extract {EXTRACT} --box 32 --bin-to 64 {OUT}", "--bin-to"),
        C("bg-radius-huge", f"extract {EXTRACT} --box 32 --bg-radius 100 {OUT}", "--bg-radius"),
        C("batch-size-0", f"extract {EXTRACT} --box 32 --batch-size 0 {OUT}", "--batch-size"),
        C("edge-bad", f"extract {EXTRACT} --box 32 --edge wrap {OUT}", "--edge"),
    ],
    "reconstruct": [
        *(C(f"in-{i}", f"reconstruct --in {f} {OUT}", name)
          for (i, f), name in zip(_ids({**PARTICLE_STAR, **POSES}), {**PARTICLE_STAR, **POSES}.values())),
        C("sym-bad", f"reconstruct {SP} --sym X5 {OUT}", "X5"),
        C("sym-c0", f"reconstruct {SP} --sym C0 {OUT}", "C0"),
        C("pad-1", f"reconstruct {SP} --pad 1 {OUT}", "--pad"),
        C("pad-huge", f"reconstruct {SP} --pad 64 {OUT}", "--pad"),
        C("batch-size-0", f"reconstruct {SP} --batch-size 0 {OUT}", "--batch-size"),
        C("batch-size-negative", f"reconstruct {SP} --batch-size -8 {OUT}", "--batch-size"),
        C("seed-text", f"reconstruct {SP} --seed one {OUT}", "--seed"),
        C("no-out", "reconstruct --in sp/particles.star", "--out"),
        C("out-unwritable", f"reconstruct {SP} --out {UNWRITABLE}/rec", UNWRITABLE, marks=NO_WRITE),
    ],
    "refine": [
        *(C(f"in-{i}", f"refine --in {f} --ref sp/truth_map.mrc --max-iter 1 {OUT}", name)
          for (i, f), name in zip(_ids(PARTICLE_STAR), PARTICLE_STAR.values())),
        *(C(f"ref-{i}", f"refine {SP} --ref {f} --max-iter 1 {OUT}", name)
          for (i, f), name in zip(_ids(MAPS), MAPS.values())),
        C("ref-rect", f"refine {SP} --ref bad/rect.mrc {OUT}", "rect.mrc"),
        C("mask-zero", f"refine {REC} --mask bad/zeros.mrc {OUT}", "zeros.mrc"),
        C("mask-nan", f"refine {REC} --mask bad/nan.mrc {OUT}", "nan.mrc"),
        C("mask-trunc", f"refine {REC} --mask bad/trunc.mrc {OUT}", "trunc.mrc"),
        C("healpix-9", f"refine {REC} --healpix-order 9 {OUT}", "--healpix-order"),
        C("max-iter-0", f"refine {REC} --max-iter 0 {OUT}", "--max-iter"),
        C("ini-high-0", f"refine {REC} --ini-high 0 {OUT}", "--ini-high"),
        C("diameter-negative", f"refine {REC} --particle-diameter -10 {OUT}", "--particle-diameter"),
        C("offset-step-0", f"refine {REC} --offset-step 0 {OUT}", "--offset-step"),
        C("max-block-small", f"refine {REC} --max-block 10 {OUT}", "--max-block"),
        C("sym-bad", f"refine {REC} --sym Q2 {OUT}", "Q2"),
        C("backend-unreachable", f"refine {REC} --max-iter 1 --backend tcp://127.0.0.1:9 {OUT}",
          "tcp://127.0.0.1:9"),
        C("profile-unknown", f"refine {REC} --max-iter 1 --profile nosuch-profile {OUT}", "nosuch-profile"),
        C("backend-and-profile", f"refine {REC} --backend threads --profile x {OUT}", "--backend", "--profile"),
        C("backend-local-0", f"refine {REC} --backend local:0 {OUT}", "local:0"),
    ],
    "postprocess": [
        *(C(f"half1-{i}", f"postprocess --half1 {f} --half2 {MAP2} {OUT}", name)
          for (i, f), name in zip(_ids(MAPS), MAPS.values())),
        C("half2-small", f"postprocess --half1 {MAP1} --half2 bad/small.mrc {OUT}", "small.mrc"),
        C("half2-apix", f"postprocess --half1 {MAP1} --half2 bad/apix2.mrc {OUT}", "apix2.mrc"),
        C("half2-nan", f"postprocess --half1 {MAP1} --half2 bad/nan.mrc {OUT}", "nan.mrc"),
        C("halves-zero", f"postprocess --half1 bad/zeros.mrc --half2 bad/zeros.mrc {OUT}", "zeros.mrc"),
        C("mask-small", f"postprocess --half1 {MAP1} --half2 {MAP2} --mask bad/small.mrc {OUT}", "small.mrc"),
        C("mask-nan", f"postprocess --half1 {MAP1} --half2 {MAP2} --mask bad/nan.mrc {OUT}", "nan.mrc"),
        C("mask-zero", f"postprocess --half1 {MAP1} --half2 {MAP2} --mask bad/zeros.mrc {OUT}", "zeros.mrc"),
        C("mask-keyword", f"postprocess --half1 {MAP1} --half2 {MAP2} --mask snug {OUT}", "snug"),
        C("bfactor-text", f"postprocess --half1 {MAP1} --half2 {MAP2} --bfactor sharp {OUT}", "--bfactor"),
        C("low-pass-0", f"postprocess --half1 {MAP1} --half2 {MAP2} --low-pass 0 {OUT}", "--low-pass"),
        C("low-pass-negative", f"postprocess --half1 {MAP1} --half2 {MAP2} --low-pass -4 {OUT}", "--low-pass"),
        C("threshold-fraction-1", f"postprocess --half1 {MAP1} --half2 {MAP2} --mask-threshold-fraction 1 {OUT}",
          "--mask-threshold-fraction"),
        C("autob-reversed", f"postprocess --half1 {MAP1} --half2 {MAP2} --autob-lowres 5 --autob-highres 10 {OUT}",
          "--autob"),
        C("mtf-garbage", f"postprocess --half1 {MAP1} --half2 {MAP2} --mtf bad/garbage.star {OUT}", "garbage.star"),
        C("mtf-missing", f"postprocess --half1 {MAP1} --half2 {MAP2} --mtf bad/gone.star {OUT}", "gone.star"),
        C("pixel-size-0", f"postprocess --half1 bad/apix0.mrc --half2 bad/apix0.mrc --pixel-size 0 {OUT}",
          "--pixel-size"),
        C("no-pixel-size", f"postprocess --half1 bad/apix0.mrc --half2 bad/apix0.mrc {OUT}", "apix0.mrc"),
    ],
    "fsc": [
        *(C(f"map1-{i}", f"fsc {f} {MAP2}", name) for (i, f), name in zip(_ids(MAPS), MAPS.values())),
        C("map2-small", f"fsc {MAP1} bad/small.mrc", "small.mrc"),
        C("map2-apix", f"fsc {MAP1} bad/apix2.mrc", "apix2.mrc"),
        C("maps-zero", "fsc bad/zeros.mrc bad/zeros.mrc", "zeros.mrc"),
        C("mask-small", f"fsc {MAP1} {MAP2} --mask bad/small.mrc", "small.mrc"),
        C("mask-nan", f"fsc {MAP1} {MAP2} --mask bad/nan.mrc", "nan.mrc"),
        C("pixel-size-negative", "fsc bad/apix0.mrc bad/apix0.mrc --pixel-size -1", "--pixel-size"),
        C("no-pixel-size", "fsc bad/apix0.mrc bad/apix0.mrc", "apix0.mrc"),
        C("out-folder-missing", f"fsc {MAP1} {MAP2} --out nowhere/fsc.star", "nowhere"),
    ],
    "run": [
        C("missing", "run bad/gone.toml", "gone.toml"),
        C("empty", "run bad/empty.toml", "empty.toml"),
        C("broken", "run bad/broken.toml", "broken.toml"),
        C("not-toml", "run bad/garbage.star", "garbage.star"),
        C("unknown-stage", "run bad/wf_stage.toml", "dance"),
        C("bad-param", "run bad/wf_param.toml", "--batch-size"),
        C("unknown-ref", "run bad/wf_ref.toml", "nope"),
        C("unknown-flag", "run bad/wf_flag.toml", "frobnicate"),
        C("until-unknown", "run bad/wf_ok.toml --until zzz --dry-run", "zzz"),
        C("force-unknown", "run bad/wf_ok.toml --force zzz --dry-run", "zzz"),
        C("project-unwritable", f"run bad/wf_ok.toml --project {UNWRITABLE}", UNWRITABLE, marks=NO_WRITE),
    ],
    "project init": [
        C("is-a-file", "project init bad/not_a_folder", "not_a_folder"),
    ],
    "project jobs": [
        C("not-a-project", "project jobs --project unrelated", "unrelated"),
        C("missing", "project jobs --project bad/gone", "gone"),
    ],
    "project show": [
        C("unknown-job", "project show 99 --project proj", "99"),
        C("bad-job", "project show job0x --project proj", "job0x"),
        C("not-a-project", "project show 1 --project unrelated", "unrelated"),
    ],
    "project status": [
        C("not-a-project", "project status --project unrelated", "unrelated"),
        C("is-a-file", "project status --project bad/not_a_folder", "not_a_folder"),
    ],
    "project lineage": [
        C("unknown-file", "project lineage unrelated/notes.txt --project proj", "notes.txt"),
        C("missing-file", "project lineage bad/gone.mrc --project proj", "gone.mrc"),
        C("not-a-project", "project lineage sp/truth_map.mrc --project unrelated", "unrelated"),
    ],
    "project note": [
        C("unknown-job", "project note 42 hello --project proj", "42"),
        C("not-a-project", "project note 1 hello --project unrelated", "unrelated"),
    ],
    "project groups": [
        C("not-a-project", "project groups --project unrelated", "unrelated"),
    ],
    "project group": [
        C("unknown-job", "project group g --from-job 77 --project proj", "77"),
        C("star-garbage", "project group g --from-star bad/garbage.star --project proj", "garbage.star"),
        C("star-missing", "project group g --from-star bad/gone.star --project proj", "gone.star"),
        C("star-column", "project group g --from-star sp/particles.star --column rlnNope --project proj", "rlnNope"),
        C("delete-unknown", "project group nogroup --delete --project proj", "nogroup"),
        C("not-a-project", "project group g --from-star sp/particles.star --project unrelated", "unrelated"),
    ],
    "report": [
        C("not-a-project", "report unrelated", "unrelated"),
        C("missing", "report bad/gone", "gone"),
        C("is-a-file", "report bad/not_a_folder", "not_a_folder"),
        C("out-is-a-folder", "report proj --out sp", "sp"),
    ],
    "demo": [
        C("out-is-a-file", "demo --out bad/not_a_folder/demo --quick", "not_a_folder"),
        C("out-under-a-file", "demo --out sp/particles.star --quick", "particles.star"),
        C("out-unwritable", f"demo --out {UNWRITABLE} --quick", UNWRITABLE, marks=NO_WRITE),
    ],
    "serve": [
        C("not-a-project", "serve unrelated --port 0", "unrelated"),
        C("missing", "serve bad/gone --port 0", "gone"),
        C("port-huge", "serve proj --port 70000", "--port"),
        C("port-negative", "serve proj --port -1", "--port"),
        C("port-text", "serve proj --port http", "--port"),
    ],
    "import movies": [
        C("no-files", f"import movies --glob 'nothing/*.tiff' {ACQ} --exposure-per-frame 1 {OUT}", "nothing"),
        C("missing", f"import movies bad/gone.mrcs {ACQ} --exposure-per-frame 1 {OUT}", "gone.mrcs"),
        C("truncated", f"import movies bad/movie_trunc.mrcs {ACQ} --exposure-per-frame 1 {OUT}", "movie_trunc.mrcs"),
        C("tiff-garbage", f"import movies bad/movie.tiff {ACQ} --exposure-per-frame 1 {OUT}", "movie.tiff"),
        C("not-a-movie", f"import movies bad/garbage.mrc {ACQ} --exposure-per-frame 1 {OUT}", "garbage.mrc"),
        C("pixel-size-0", f"import movies smv/Movies/movie_0001.mrcs --pixel-size 0 --voltage 300 --cs 2.7 "
          f"--amplitude-contrast 0.1 --exposure-per-frame 1 {OUT}", "--pixel-size"),
        C("voltage-negative", f"import movies smv/Movies/movie_0001.mrcs --pixel-size 4 --voltage -300 --cs 2.7 "
          f"--amplitude-contrast 0.1 --exposure-per-frame 1 {OUT}", "--voltage"),
        C("voltage-huge", f"import movies smv/Movies/movie_0001.mrcs --pixel-size 4 --voltage 1e9 --cs 2.7 "
          f"--amplitude-contrast 0.1 --exposure-per-frame 1 {OUT}", "--voltage"),
        C("exposure-0", f"import movies smv/Movies/movie_0001.mrcs {ACQ} --exposure-per-frame 0 {OUT}",
          "--exposure-per-frame"),
        C("gain-trunc", f"import movies smv/Movies/movie_0001.mrcs {ACQ} --exposure-per-frame 1 --gain bad/trunc.mrc "
          f"{OUT}", "trunc.mrc"),
        C("gain-shape", f"import movies smv/Movies/movie_0001.mrcs {ACQ} --exposure-per-frame 1 --gain "
          f"bad/gain_shape.mrc {OUT}", "gain_shape.mrc"),
        C("gain-rot-5", f"import movies smv/Movies/movie_0001.mrcs {ACQ} --exposure-per-frame 1 --gain smv/gain.mrc "
          f"--gain-rot 5 {OUT}", "--gain-rot"),
        C("defect-garbage", f"import movies smv/Movies/movie_0001.mrcs {ACQ} --exposure-per-frame 1 "
          f"--defect bad/garbage.txt {OUT}", "garbage.txt"),
        C("optics-from-regex", f"import movies smv/Movies/movie_0001.mrcs {ACQ} --exposure-per-frame 1 "
          f"--optics-from '(' {OUT}", "--optics-from"),
        C("append-garbage", f"import movies smv/Movies/movie_0001.mrcs {ACQ} --exposure-per-frame 1 "
          f"--append bad/garbage.star {OUT}", "garbage.star"),
        C("optics-group-spaces", f"import movies smv/Movies/movie_0001.mrcs {ACQ} --exposure-per-frame 1 "
          f"--optics-group 'two words' {OUT}", "--optics-group"),
    ],
    "import micrographs": [
        C("no-files", f"import micrographs --glob 'nothing/*.mrc' {ACQ} {OUT}", "nothing"),
        C("missing", f"import micrographs bad/gone.mrc {ACQ} {OUT}", "gone.mrc"),
        C("truncated", f"import micrographs bad/mic_trunc.mrc {ACQ} {OUT}", "mic_trunc.mrc"),
        C("garbage", f"import micrographs bad/garbage.mrc {ACQ} {OUT}", "garbage.mrc"),
        C("empty", f"import micrographs bad/empty.mrc {ACQ} {OUT}", "empty.mrc"),
        C("pixel-size-negative", f"import micrographs sm/micrographs/mic_0001.mrc --pixel-size -1 --voltage 300 "
          f"--cs 2.7 --amplitude-contrast 0.1 {OUT}", "--pixel-size"),
        C("cs-huge", f"import micrographs sm/micrographs/mic_0001.mrc --pixel-size 4 --voltage 300 --cs 200 "
          f"--amplitude-contrast 0.1 {OUT}", "--cs"),
        C("amplitude-contrast-1", f"import micrographs sm/micrographs/mic_0001.mrc --pixel-size 4 --voltage 300 "
          f"--cs 2.7 --amplitude-contrast 1 {OUT}", "--amplitude-contrast"),
        C("voltage-text", f"import micrographs sm/micrographs/mic_0001.mrc --pixel-size 4 --voltage high "
          f"--cs 2.7 --amplitude-contrast 0.1 {OUT}", "--voltage"),
        C("mtf-missing", f"import micrographs sm/micrographs/mic_0001.mrc {ACQ} --mtf bad/gone.star {OUT}",
          "gone.star"),
    ],
    "import particles": [
        *(C(f"in-{i}", f"import particles --in {f} {OUT}", name)
          for (i, f), name in zip(_ids(PARTICLE_STAR), PARTICLE_STAR.values())
          if i not in ("p_nan_image",)),  # import checks headers and sizes, not the pixels: the jobs refuse NaN
        C("pixel-size-0", f"import particles {SP} --pixel-size 0 {OUT}", "--pixel-size"),
        C("voltage-0", f"import particles {SP} --voltage 0 {OUT}", "--voltage"),
        C("optics-group-quotes", f"import particles {SP} --optics-group 'a\"b' {OUT}", "--optics-group"),
        *(C(f"cs-{Path(f).stem}", f"import particles --in {f} {OUT}", name) for f, name in CS_FILES.items()),
        C("cs-4k-dataset-no-blob", f"import particles --in {CS_4K} {OUT}", "4k_dataset.cs", "blob/path",
          marks=(pytest.mark.skipif(not Path(CS_4K).is_file(), reason="shared data not found"),)),
        C("cs-passthrough-other-uids", f"import particles --in bad/cs_ok.cs --passthrough bad/cs_other_uids.cs "
          f"{OUT}", "cs_other_uids.cs"),
        C("cs-passthrough-gone", f"import particles --in bad/cs_ok.cs --passthrough bad/gone.cs {OUT}", "gone.cs"),
        C("cs-project-dir-file", f"import particles --in bad/cs_ok.cs --cs-project-dir bad/not_a_folder {OUT}",
          "--cs-project-dir"),
        C("cs-voltage-disagrees", f"import particles --in bad/cs_ok.cs --voltage 200 {OUT}", "--voltage"),
        C("star-with-passthrough", f"import particles {SP} --passthrough bad/cs_ok.cs {OUT}", "--passthrough"),
    ],
    "export cryosparc": [
        *(C(f"in-{i}", f"export cryosparc --in {f} {OUT}", name)
          for (i, f), name in zip(_ids(PARTICLE_STAR), PARTICLE_STAR.values())
          if i not in ("p_nan_image",)),  # the export links the stacks, it does not read the pixels
        C("no-ctf", f"export cryosparc --in bad/p_no_ctf.star {OUT}", "p_no_ctf.star", "rlnDefocusU"),
        C("nan-defocus", f"export cryosparc --in bad/p_nan_defocus.star {OUT}", "rlnDefocusU"),
        C("nan-angle", f"export cryosparc --in bad/p_nan_angle.star {OUT}", "rlnAngleTilt"),
        C("one-angle-missing", f"export cryosparc --in bad/p_no_angles.star {OUT}", "rlnAngleRot"),
        C("a-map", f"export cryosparc --in rec/half1.mrc {OUT}", "half1.mrc"),
    ],
    "export coords": [
        *(C(f"in-{i}", f"export coords --in {f} --format cistem --micrographs sm/micrographs.star {OUT}", name)
          for (i, f), name in zip(_ids(COORDS), COORDS.values())),
        C("no-format", f"export coords --in sm/coords.star {OUT}", "--format"),
        C("cbox-no-box", f"export coords --in sm/coords.star --format cbox {OUT}", "--box"),
        C("box-negative", f"export coords --in sm/coords.star --format cbox --box -3 {OUT}", "--box"),
        C("cistem-no-mics", f"export coords --in sm/coords.star --format cistem {OUT}", "--micrographs"),
        C("cistem-mics-gone", f"export coords --in sm/coords.star --format cistem --micrographs bad/gone.star {OUT}",
          "gone.star"),
    ],
    "import coords": [
        C("no-files", f"import coords --glob 'nothing/*.star' --micrographs sm/micrographs.star {OUT}", "nothing"),
        C("garbage", f"import coords bad/garbage.star --micrographs sm/micrographs.star {OUT}", "garbage.star"),
        C("nan", f"import coords bad/picks_nan.star --micrographs sm/micrographs.star {OUT}", "picks_nan.star"),
        C("text", f"import coords bad/picks_text.star --micrographs sm/micrographs.star {OUT}", "picks_text.star"),
        C("box-text", f"import coords bad/picks.box --micrographs sm/micrographs.star {OUT}", "picks.box"),
        C("mics-missing", f"import coords sm/micrographs/mic_0001_truth.star --micrographs bad/gone.star {OUT}",
          "gone.star"),
        C("mics-garbage", f"import coords sm/micrographs/mic_0001_truth.star --micrographs bad/garbage.star {OUT}",
          "garbage.star"),
        C("no-match", f"import coords bad/picks_nan.star --micrographs bad/m_zero_rows.star {OUT}", "m_zero_rows.star"),
        C("scale-0", f"import coords sm/micrographs/mic_0001_truth.star --micrographs sm/micrographs.star --scale 0 "
          f"{OUT}", "--scale"),
        C("scale-negative", f"import coords sm/micrographs/mic_0001_truth.star --micrographs sm/micrographs.star "
          f"--scale -2 {OUT}", "--scale"),
        C("format-bad", f"import coords sm/micrographs/mic_0001_truth.star --micrographs sm/micrographs.star "
          f"--format csv {OUT}", "--format"),
    ],
    "import map": [
        *(C(f"in-{i}", f"import map --in {f} {OUT}", name) for (i, f), name in zip(_ids(MAPS), MAPS.values())),
        C("stack", f"import map --in sp/particles.mrcs {OUT}", "particles.mrcs",),
        C("pixel-size-0", f"import map --in sp/truth_map.mrc --pixel-size 0 {OUT}", "--pixel-size"),
        C("pixel-size-negative", f"import map --in sp/truth_map.mrc --pixel-size -1 {OUT}", "--pixel-size"),
        C("pixel-size-text", f"import map --in sp/truth_map.mrc --pixel-size small {OUT}", "--pixel-size"),
        C("no-pixel-size", f"import map --in bad/apix0.mrc {OUT}", "apix0.mrc"),
    ],
    "select micrographs": [
        C("in-garbage", f"select micrographs --in bad/garbage.star --where 'rlnDefocusU < 20000' {OUT}",
          "garbage.star"),
        C("in-missing", f"select micrographs --in bad/gone.star --where 'rlnDefocusU < 20000' {OUT}", "gone.star"),
        C("in-zero-rows", f"select micrographs --in bad/m_zero_rows.star --where 'rlnDefocusU < 20000' {OUT}",
          "m_zero_rows.star"),
        C("where-column", f"select micrographs {MICS_OK} --where 'rlnNope < 3' {OUT}", "rlnNope"),
        C("where-syntax", f"select micrographs {MICS_OK} --where 'defocus is small' {OUT}", "--where"),
        C("where-text-number", f"select micrographs {MICS_OK} --where 'rlnDefocusU < many' {OUT}", "--where"),
        C("where-nan", f"select micrographs --in bad/m_nan_defocus.star --where 'rlnDefocusU < 20000' {OUT}",
          "rlnDefocusU"),
        C("nothing-kept", f"select micrographs {MICS_OK} --where 'rlnDefocusU < 0' {OUT}", "rlnDefocusU"),
        C("class-text", f"select micrographs {MICS_OK} --class one {OUT}", "--class"),
        C("class-missing-column", f"select micrographs {MICS_OK} --class 1 {OUT}", "rlnClassNumber"),
        C("consensus-garbage", f"select micrographs {MICS_OK} --consensus bad/garbage.star {OUT}", "garbage.star"),
        C("consensus-other", f"select micrographs {MICS_OK} --consensus bad/c_other_mics.star {OUT}",
          "c_other_mics.star"),
        C("tolerance-0", f"select micrographs {MICS_OK} --consensus sm/micrographs.star --tolerance-defocus 0 {OUT}",
          "--tolerance-defocus"),
    ],
    "select particles": [
        C("in-empty", f"select particles --in bad/empty.star --where 'rlnDefocusU < 20000' {OUT}", "empty.star"),
        C("in-cut", f"select particles --in bad/cut.star --where 'rlnDefocusU < 20000' {OUT}", "cut.star"),
        C("in-zero-rows", f"select particles --in bad/p_zero_rows.star --where 'rlnDefocusU < 20000' {OUT}",
          "p_zero_rows.star"),
        C("where-column", f"select particles {SP} --where 'rlnNope < 3' {OUT}", "rlnNope"),
        C("where-op", f"select particles {SP} --where 'rlnDefocusU ~ 3' {OUT}", "--where"),
        C("where-text-column", f"select particles {SP} --where 'rlnImageName > 3' {OUT}", "rlnImageName"),
        C("nothing-kept", f"select particles {SP} --where 'rlnDefocusU > 1e9' {OUT}", "rlnDefocusU"),
        C("class-none-kept", f"select particles {SP} --class 5,6 {OUT}", "rlnClassNumber"),
        C("consensus-missing", f"select particles {SP} --consensus bad/gone.star {OUT}", "gone.star"),
        C("tolerance-angle-negative", f"select particles {SP} --consensus sp/particles.star --tolerance-angle -5 {OUT}",
          "--tolerance-angle"),
    ],
    "simulate particles": [
        C("box-0", f"simulate particles --box 0 {OUT}", "--box"),
        C("box-negative", f"simulate particles --box -64 {OUT}", "--box"),
        C("box-huge", f"simulate particles --box 100000 {OUT}", "--box"),
        C("box-text", f"simulate particles --box big {OUT}", "--box"),
        C("pixel-size-0", f"simulate particles --pixel-size 0 {OUT}", "--pixel-size"),
        C("pixel-size-negative", f"simulate particles --pixel-size -1 {OUT}", "--pixel-size"),
        C("voltage-0", f"simulate particles --voltage 0 {OUT}", "--voltage"),
        C("n-0", f"simulate particles --n 0 {OUT}", "--n"),
        C("n-negative", f"simulate particles --n -5 {OUT}", "--n"),
        C("snr-negative", f"simulate particles --snr -1 {OUT}", "--snr"),
        C("defocus-reversed", f"simulate particles --defocus 20000 5000 {OUT}", "--defocus"),
        C("amplitude-contrast-2", f"simulate particles --amplitude-contrast 2 {OUT}", "--amplitude-contrast"),
        C("batch-size-0", f"simulate particles --batch-size 0 {OUT}", "--batch-size"),
        C("preset-bad", f"simulate particles --preset huge {OUT}", "--preset"),
        *(C(f"map-{i}", f"simulate particles --map {f} --n 4 --box 32 {OUT}", name)
          for (i, f), name in zip(_ids(MAPS), MAPS.values())),
        C("map-zeros", f"simulate particles --map bad/zeros.mrc --n 4 --box 32 {OUT}", "zeros.mrc"),
        C("map-no-pixel-size", f"simulate particles --map bad/apix0.mrc --n 4 --box 32 {OUT}", "apix0.mrc"),
        C("structure-garbage", f"simulate particles --structure bad/garbage.txt --n 4 --box 32 {OUT}", "garbage.txt"),
        C("structure-missing", f"simulate particles --structure bad/gone.pdb --n 4 --box 32 {OUT}", "gone.pdb"),
    ],
    "simulate micrographs": [
        C("n-0", f"simulate micrographs --n-micrographs 0 {OUT}", "--n-micrographs"),
        C("out-unwritable", f"simulate micrographs --n-micrographs 1 --out {UNWRITABLE}", UNWRITABLE, marks=NO_WRITE),
        C("size-small", f"simulate micrographs --size 32 32 {OUT}", "--size"),
        C("size-negative", f"simulate micrographs --size -256 256 {OUT}", "--size"),
        C("pixel-size-0", f"simulate micrographs --pixel-size 0 {OUT}", "--pixel-size"),
        C("box-small", f"simulate micrographs --box 8 {OUT}", "--box"),
        C("box-over-size", f"simulate micrographs --size 64 64 --box 128 --n-micrographs 1 {OUT}", "--box"),
        C("tilt-80", f"simulate micrographs --tilt-max 80 {OUT}", "--tilt-max"),
        C("defocus-negative", f"simulate micrographs --defocus -1 5 {OUT}", "--defocus"),
        C("dose-0", f"simulate micrographs --dose 0 {OUT}", "--dose"),
        C("ice-negative", f"simulate micrographs --ice-thickness -10 {OUT}", "--ice-thickness"),
        C("structure-trunc", f"simulate micrographs --structure bad/trunc.mrc --n-micrographs 1 --size 128 128 {OUT}",
          "trunc.mrc"),
        C("structure-nan", f"simulate micrographs --structure bad/nan.mrc --n-micrographs 1 --size 128 128 {OUT}",
          "nan.mrc"),
        C("particles-negative", f"simulate micrographs --particles-per-micrograph -1 {OUT}",
          "--particles-per-micrograph"),
    ],
    "simulate movies": [
        C("frames-0", f"simulate movies --frames 0 {OUT}", "--frames"),
        C("frames-negative", f"simulate movies --frames -4 {OUT}", "--frames"),
        C("dose-negative", f"simulate movies --dose-per-frame -1 {OUT}", "--dose-per-frame"),
        C("voltage-0", f"simulate movies --voltage 0 {OUT}", "--voltage"),
        C("n-movies-0", f"simulate movies --n-movies 0 {OUT}", "--n-movies"),
        C("size-small", f"simulate movies --size 16 16 {OUT}", "--size"),
        C("pixel-size-negative", f"simulate movies --pixel-size -4 {OUT}", "--pixel-size"),
        C("format-bad", f"simulate movies --format gif {OUT}", "--format"),
        C("gain-variation-negative", f"simulate movies --gain-variation -1 {OUT}", "--gain-variation"),
        C("hot-pixels-negative", f"simulate movies --hot-pixels -3 {OUT}", "--hot-pixels"),
        C("structure-garbage", f"simulate movies --structure bad/garbage.mrc --n-movies 1 --size 128 128 {OUT}",
          "garbage.mrc"),
    ],
    "profiles list": [
        C("broken-toml", "profiles list --project bad/prof", "profiles.toml"),
        C("bad-profile", "profiles list --project bad/prof2", "toaster"),
    ],
    "profiles test": [
        C("unknown", "profiles test nope", "nope"),
        C("items-0", "profiles test nope --items 0", "--items"),
        C("broken-toml", "profiles test x --project bad/prof", "profiles.toml"),
    ],
}

C3D = "--in sp/particles.star --ref sp/truth_map.mrc --skip-align --classes 2 --iter 1"
ROWS["class3d"] = [
    *(C(f"in-{i}", f"class3d --in {f} --ref sp/truth_map.mrc --classes 2 --iter 1 {OUT}", name)
      for (i, f), name in zip(_ids(PARTICLE_STAR), PARTICLE_STAR.values())),
    *(C(f"ref-{i}", f"class3d {SP} --ref {f} --classes 2 --iter 1 {OUT}", name)
      for (i, f), name in zip(_ids(MAPS), MAPS.values())),
    C("ref-rect", f"class3d {SP} --ref bad/rect.mrc --classes 2 {OUT}", "rect.mrc"),
    C("classes-1", f"class3d {SP} --ref sp/truth_map.mrc --classes 1 {OUT}", "--classes"),
    C("refs-vs-classes", f"class3d {SP} --ref sp/truth_map.mrc --ref sp/truth_map.mrc --classes 3 {OUT}",
      "--classes"),
    C("mask-outside-0-1", f"class3d {C3D} --mask bad/twos.mrc {OUT}", "twos.mrc"),
    C("mask-zero", f"class3d {C3D} --mask bad/zeros.mrc {OUT}", "zeros.mrc"),
    C("mask-nan", f"class3d {C3D} --mask bad/nan.mrc {OUT}", "nan.mrc"),
    C("iter-0", f"class3d {C3D} --iter 0 {OUT}", "--iter"),
    C("ini-high-0", f"class3d {C3D} --ini-high 0 {OUT}", "--ini-high"),
    C("search-bad", f"class3d {C3D} --search everywhere {OUT}", "--search"),
    C("stop-change-1", f"class3d {C3D} --stop-change 1 {OUT}", "--stop-change"),
    C("plateau-change-0", f"class3d {C3D} --plateau-change 0 {OUT}", "--plateau-change"),
    C("plateau-negative", f"class3d {C3D} --plateau -1 {OUT}", "--plateau"),
    C("init-components-0", f"class3d {C3D} --init-components 0 {OUT}", "--init-components"),
    C("sym-bad", f"class3d {C3D} --sym Q2 {OUT}", "Q2"),
    C("diameter-too-big", f"class3d {C3D} --particle-diameter 100000 {OUT}", "--particle-diameter"),
    C("no-ref", f"class3d {SP} --classes 2 {OUT}", "--ref"),
    C("backend-unreachable", f"class3d {C3D} --backend tcp://127.0.0.1:9 {OUT}", "tcp://127.0.0.1:9"),
    C("profile-unknown", f"class3d {C3D} --profile nosuch-profile {OUT}", "nosuch-profile"),
]

#: Cases of commands written on other branches at the same time; each joins ``ROWS`` once its command is in the
#: app, so the merged suite covers it from the start (generic cases: missing, empty and corrupt inputs).
PENDING: dict[str, list[tuple]] = {
    "class2d": [
        C("in-gone", f"class2d --in bad/gone.star --classes 2 --particle-diameter 100 {OUT}", "gone.star"),
        C("in-zero-rows", f"class2d --in bad/p_zero_rows.star --classes 2 --particle-diameter 100 {OUT}",
          "p_zero_rows.star"),
        C("in-trunc", f"class2d --in bad/p_trunc.star --classes 2 --particle-diameter 100 {OUT}", "trunc.mrcs"),
        C("classes-0", f"class2d {SP} --classes 0 --particle-diameter 100 {OUT}", "--classes"),
        C("continue-gone", "class2d --continue bad/gone", "gone", "job.json"),
        C("backend-unreachable", f"class2d {SP} --classes 2 --iter 1 --backend tcp://127.0.0.1:9 {OUT}",
          "tcp://127.0.0.1:9"),
        C("profile-unknown", f"class2d {SP} --classes 2 --iter 1 --profile nosuch-profile {OUT}", "nosuch-profile"),
        C("backend-and-profile", f"class2d {SP} --classes 2 --backend threads --profile x {OUT}", "--backend",
          "--profile"),
        C("backend-local-0", f"class2d {SP} --classes 2 --backend local:0 {OUT}", "local:0"),
    ],
    "select classes": [
        C("in-gone", f"select classes --in bad/gone --class 1 {OUT}", "gone"),
        C("in-not-classes", f"select classes --in unrelated --class 1 {OUT}", "unrelated"),
    ],
    "abinitio": [
        C("in-gone", f"abinitio --in bad/gone.star {OUT}", "gone.star"),
        C("in-zero-rows", f"abinitio --in bad/p_zero_rows.star {OUT}", "p_zero_rows.star"),
        C("in-trunc", f"abinitio --in bad/p_trunc.star {OUT}", "trunc.mrcs"),
        C("backend-unreachable", f"abinitio {SP} --iterations 2 --backend tcp://127.0.0.1:9 {OUT}",
          "tcp://127.0.0.1:9"),
        C("profile-unknown", f"abinitio {SP} --iterations 2 --profile nosuch-profile {OUT}", "nosuch-profile"),
    ],
    "align-maps": [
        C("fixed-gone", f"align-maps bad/gone.mrc {MAP2} {OUT}", "gone.mrc"),
        C("moving-trunc", f"align-maps {MAP1} bad/trunc.mrc {OUT}", "trunc.mrc"),
        C("moving-nan", f"align-maps {MAP1} bad/nan.mrc {OUT}", "nan.mrc"),
    ],
    "flip-hand": [
        C("in-gone", "flip-hand bad/gone.mrc --out {out}.mrc", "gone.mrc"),
        C("in-trunc", "flip-hand bad/trunc.mrc --out {out}.mrc", "trunc.mrc"),
    ],
}


def command_names() -> set[str]:
    """Every command of the CLI, as the words a user types (``"import particles"``)."""
    import typer.main

    from cryolens.cli.main import app

    def walk(group, words: tuple[str, ...] = ()):
        if hasattr(group, "commands"):
            for name, sub in group.commands.items():
                yield from walk(sub, (*words, name))
        else:
            yield " ".join(words)

    return set(walk(typer.main.get_command(app)))


ROWS.update({command: rows for command, rows in PENDING.items() if command in command_names()})
CASES = [Case(command, id, tuple(shlex.split(line)), names, marks)
         for command, rows in ROWS.items() for id, line, names, marks in rows]
