"""Job report extras (verdict, truth panels), the project report (``cryolens report``) and the local web
viewer (``cryolens serve``): pages, live progress, path safety (raw sockets), the CLI, and an end-to-end
check in headless Chromium (marker ``browser``; skipped without a ``chromium`` binary).

One small project is built per module: simulate particles (box 32) -> reconstruct -> postprocess.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import invoke_cli

from cryolens.io import write_star
from cryolens.jobs.truth import find_truth, match_particles
from cryolens.jobs.truth_panels import pose_errors, truth_panels
from cryolens.jobs.verdicts import VERDICTS, needs_check, verdict
from cryolens.project.db import open_project
from cryolens.report.serve import safe_path, serve_in_thread

CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    """A project P: Simulate/job001 (120 particles, 10 % junk) -> Reconstruct/job002 -> Postprocess/job003."""
    root = tmp_path_factory.mktemp("report") / "P"
    invoke_cli("project", "init", str(root))
    invoke_cli("simulate", "particles", "--n", "120", "--box", "32", "--pixel-size", "4", "--snr", "0.2",
               "--junk", "0.1", "--seed", "2", "--quiet", cwd=root)
    invoke_cli("reconstruct", "--in", "Simulate/job001/particles.star", "--quiet", "--device", "cpu", cwd=root)
    invoke_cli("postprocess", "--half1", "Reconstruct/job002/half1.mrc", "--half2", "Reconstruct/job002/half2.mrc",
               "--quiet", "--device", "cpu", cwd=root)
    return root


def test_job_report_has_verdict_and_truth_panel(demo: Path):
    page = (demo / "Reconstruct" / "job002" / "report.html").read_text()
    assert page.count('class="verdict') == 1 and page.index("Verdict:") < page.index("<h2>Summary")
    assert "Half-map FSC 0.143 at" in page and "from 120 particles" in page
    assert "Map against the truth" in page and (demo / "Reconstruct" / "job002" / "truth_fsc.png").stat().st_size
    job = json.loads((demo / "Reconstruct" / "job002" / "job.json").read_text())
    assert job["timings_s"]["report_panels"] < 30  # seconds (a loaded 2-core machine; ~2 s measured)
    assert "<!--cryolens:" not in page  # markers filled
    assert "Final resolution" in (demo / "Postprocess" / "job003" / "report.html").read_text()


def test_truth_found_through_lineage(demo: Path):
    truth = find_truth(demo / "Postprocess" / "job003")  # postprocess -> reconstruct -> simulate
    assert truth is not None and truth.stage == "simulate_particles" and truth.map.name == "truth_map.mrc"


def test_junk_panel_confusion(demo: Path, tmp_path: Path):
    """A fake class selection of the demo's particles: keep the good ones and 2 junk, reject the rest."""
    import starfile
    star = demo / "Simulate" / "job001" / "particles.star"
    blocks = starfile.read(star)
    parts = blocks["particles"]
    junk = parts["rlnCryolensJunk"].to_numpy() == 1
    keep = ~junk
    keep[np.flatnonzero(junk)[:2]] = True
    sel = tmp_path / "sel"
    sel.mkdir()
    (sel / "job.json").write_text(json.dumps({"stage": "select_classes", "inputs": {"particles": str(star)}}))
    write_star(sel / "particles.star", {"optics": blocks["optics"], "particles": parts[keep]})
    write_star(sel / "rejected.star", {"optics": blocks["optics"], "particles": parts[~keep]})
    panels = {p.title: p for p in truth_panels(sel, "select_classes", {})}
    p = panels["Keep/reject against the junk labels"]
    assert p.table[1][1:] == [int((~junk).sum()), 0] and p.table[2][1:] == [2, int(junk.sum()) - 2]


def test_class2d_junk_per_class_and_counts(demo: Path, tmp_path: Path):
    """A fake 2D classification: junk in class 2, good particles in class 1; counts and junk per class."""
    import starfile
    from cryolens.jobs.report import write_report
    from cryolens.jobs.report_panels import complete_report
    star = demo / "Simulate" / "job001" / "particles.star"
    blocks = starfile.read(star)
    parts = blocks["particles"].copy()
    parts["rlnClassNumber"] = 1 + parts["rlnCryolensJunk"].astype(int)
    c2d = tmp_path / "c2d"
    c2d.mkdir()
    (c2d / "job.json").write_text(json.dumps({"stage": "class2d", "inputs": {"particles": str(star)}}))
    write_star(c2d / "particles.star", {"optics": blocks["optics"], "particles": parts})
    write_report(c2d / "report.html", title="2D classification", summary={}, params={})
    complete_report(c2d, stage="class2d", results={"n_particles": len(parts), "classes": 2, "populated_classes": 2},
                    params={})
    page = (c2d / "report.html").read_text()
    n_junk = int(parts["rlnCryolensJunk"].sum())
    assert "Particles per class" in page and "Junk per class against the truth" in page
    assert f"<td>2</td><td>{n_junk}</td><td>{n_junk}</td><td>100</td>" in page
    assert f"<td>1</td><td>{len(parts) - n_junk}</td><td>0</td><td>0</td>" in page


def test_pose_errors_recover_global_frame():
    """Poses off by a global rotation and a 3-D map shift score ~0° and ~0 Å; noise shows up."""
    from cryolens.core.rotations import euler_to_matrix, matrix_to_euler, random_rotations
    import torch
    n = 200
    r_true = random_rotations(n, generator=torch.Generator().manual_seed(1)).double()
    g = euler_to_matrix(torch.tensor(40.0), torch.tensor(70.0), torch.tensor(-20.0)).double()
    r_est = r_true @ g
    t = np.array([3.0, -2.0, 5.0])
    true = pd.DataFrame(np.stack([a.numpy() for a in matrix_to_euler(r_true)], 1),
                        columns=["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"])
    true[["rlnOriginXAngst", "rlnOriginYAngst"]] = np.random.default_rng(0).uniform(-5, 5, (n, 2))
    est = pd.DataFrame(np.stack([a.numpy() for a in matrix_to_euler(r_est)], 1), columns=true.columns[:3])
    est[["rlnOriginXAngst", "rlnOriginYAngst"]] = true[["rlnOriginXAngst", "rlnOriginYAngst"]].to_numpy() + \
        r_est.numpy()[:, :2, :] @ t
    ang, sh = pose_errors(est, true)
    assert np.median(ang) < 1e-3 and np.median(sh) < 1e-6
    est["rlnAnglePsi"] += 10.0
    ang, _ = pose_errors(est, true)
    assert 5 < np.median(ang) < 15


def test_match_by_coordinates(tmp_path: Path):
    sim = tmp_path / "sim"
    sim.mkdir()
    (sim / "job.json").write_text(json.dumps({"stage": "simulate_micrographs", "inputs": {}}))
    write_star(sim / "particles_truth.star", {"particles": pd.DataFrame({
        "rlnMicrographName": ["sim/micrographs/mic_0001.mrc"] * 2 + ["sim/micrographs/mic_0002.mrc"],
        "rlnCoordinateX": [10.0, 100.0, 10.0], "rlnCoordinateY": [10.0, 100.0, 10.0], "rlnClassNumber": [1, 2, 3]})})
    truth = find_truth(sim)
    picks = pd.DataFrame({"rlnMicrographName": ["CtfFind/job003/mic_0001.mrc", "x/mic_0002.mrc", "x/mic_0001.mrc"],
                          "rlnCoordinateX": [98.0, 12.0, 50.0], "rlnCoordinateY": [101.0, 9.0, 50.0]})
    m = match_particles(picks, truth, radius_px=5)
    assert m["true_rlnClassNumber"].tolist()[:2] == [2, 3] and np.isnan(m["true_rlnClassNumber"].iloc[2])


def test_every_verdict_survives_empty_results():
    for stage in VERDICTS:
        assert isinstance(verdict(stage, {}), str)
    assert needs_check(verdict("pick", {"n_picks": 0, "n_micrographs": 3}))
    assert verdict("unknown_stage", {}) == "unknown_stage finished."


def test_project_report(demo: Path):
    invoke_cli("report", str(demo))
    page = (demo / "report.html").read_text()
    jobs = page[page.index("Jobs in workflow order"):]
    assert jobs.index("job001 simulate_particles") < jobs.index("job002 reconstruct") < jobs.index("job003 postprocess")
    res = json.loads((demo / "Postprocess" / "job003" / "job.json").read_text())["results"]
    assert f"{res['resolution_corrected_A']} Å" in page and f"{res['bfactor_A2']} Å²" in page
    assert "Postprocess/job003/map_sharp.mrc" in page and "Reconstruct/job002/half1.mrc" in page  # lineage
    import re
    for href in set(re.findall(r'href="([^"]+)"', page)):
        assert (demo / href).is_file(), href
    out = demo.parent / "elsewhere" / "r.html"
    out.parent.mkdir()
    invoke_cli("report", str(demo), "--out", str(out))
    assert 'href="../P/Reconstruct/job002/report.html"' in out.read_text()


@pytest.fixture(scope="module")
def server(demo: Path):
    (demo.parent / "outside.txt").write_text("not the project's")
    (demo / "link_out").symlink_to(demo.parent, target_is_directory=True)
    (demo / "secret_link.txt").symlink_to(Path(__file__))
    srv, url = serve_in_thread(open_project(demo))
    yield url
    srv.shutdown()
    srv.server_close()


def raw_get(url: str, path: str) -> int:
    """The status of ``GET path`` sent as written (no client-side normalisation of ``..``)."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        head = s.recv(64).decode("latin-1")
    return int(head.split()[1])


@pytest.mark.parametrize("path, status", [
    ("/files/../cryolens.db", 403), ("/files/../../etc/passwd", 403), ("/files/%2e%2e/%2e%2e/etc/passwd", 403),
    ("/files/Reconstruct/%2E%2E/%2e%2e/x", 403), ("/files/Reconstruct/job002/..%2f..%2f..%2fetc/passwd", 403),
    ("/files//etc/passwd", 403), ("/files/%2Fetc%2Fpasswd", 403), ("/files/..%5c..%5cx", 403),
    ("/files/link_out/outside.txt", 403), ("/files/secret_link.txt", 403), ("/files/%252e%252e/x", 404),
    ("/files/Reconstruct/job002", 404), ("/files/Reconstruct/job002/missing.png", 404), ("/elsewhere", 404),
    ("/files/Reconstruct/job002/fsc.png", 200), ("/files/Reconstruct/./job002/report.html", 200),
])
def test_path_safety(server: str, path: str, status: int):
    assert raw_get(server, path) == status


def test_safe_path_hidden_names(demo: Path):
    (demo / ".hidden.txt").write_text("x")
    assert safe_path(demo, ".hidden.txt")[0] == 404 and safe_path(demo, "cryolens.db")[0] == 200


def test_viewer_pages(server: str, demo: Path):
    page = urllib.request.urlopen(server + "/", timeout=30).read().decode()
    assert all(n in page for n in ("job001", "job002", "job003", "/files/Reconstruct/job002/report.html"))
    jobs = json.loads(urllib.request.urlopen(server + "/api/jobs", timeout=30).read())
    assert [j["status"] for j in jobs] == ["finished"] * 3
    report = urllib.request.urlopen(server + "/project", timeout=30).read().decode()
    assert 'href="/files/Postprocess/job003/report.html"' in report
    png = urllib.request.urlopen(server + "/files/Reconstruct/job002/fsc.png", timeout=30)
    assert png.headers["Content-Type"] == "image/png" and png.read(8) == b"\x89PNG\r\n\x1a\n"


def test_live_progress_of_a_running_job(server: str, demo: Path):
    """A job recorded as running by a live process shows its progress from run.log."""
    p = open_project(demo)
    rec = p.new_job("abinitio")
    p.record_start(rec.id, stage="abinitio", params={}, pid=os.getpid())
    (demo / rec.folder / "run.log").write_text("2026-01-01 10:00:00,000 INFO cryolens abinitio\n"
                                               "2026-01-01 10:00:05,000 INFO SGD: 30/120 (alignment limit 20.0 Å)\n")
    try:
        jobs = json.loads(urllib.request.urlopen(server + "/api/jobs", timeout=30).read())
        run = next(j for j in jobs if j["name"] == rec.name)
        assert run["status"] == "running" and run["progress"]["fraction"] == 0.25
        assert run["progress"]["message"].startswith("SGD: 30/120")
        assert "<progress" in urllib.request.urlopen(server + "/", timeout=30).read().decode()
    finally:
        p.record_failure(rec.id, "test over")


def test_serve_cli(demo: Path, monkeypatch):
    """The command binds 127.0.0.1 by default, warns for another --host, and stops on Ctrl-C (simulated)."""
    import cryolens.report.serve as serve
    made = []
    real = serve.make_server

    def fake(project, **kw):
        server = real(project, **{**kw, "port": 0})
        made.append((kw["host"], server))

        def interrupted():
            raise KeyboardInterrupt
        server.serve_forever = interrupted
        return server
    monkeypatch.setattr(serve, "make_server", fake)
    r = invoke_cli("serve", str(demo))
    assert made[-1][0] == "127.0.0.1" and "http://127.0.0.1:" in r.output and "warning" not in r.output
    r = invoke_cli("serve", str(demo), "--host", "0.0.0.0", "--port", "8123")
    text = " ".join(r.output.split())
    assert made[-1][0] == "0.0.0.0" and "warning" in text and "no authentication" in text and "stopped" in text


def test_align_truth_by_poses(demo: Path):
    """A map rotated (and mirrored) against the truth, with poses to match: frame and hand recovered."""
    import torch
    from cryolens.core.rotations import euler_to_matrix, matrix_to_euler
    from cryolens.jobs.fsc_maps import load_cubic_map
    from cryolens.jobs.truth_panels import align_truth_by_poses
    from cryolens.mapalign import flip_hand, transform_volume
    truth, _ = load_cubic_map(demo / "Simulate" / "job001" / "truth_map.mrc")
    import starfile
    true = starfile.read(demo / "Simulate" / "job001" / "particles.star")["particles"].iloc[:60]
    g = euler_to_matrix(torch.tensor(30.0), torch.tensor(50.0), torch.tensor(-70.0)).double()
    mirror = torch.diag(torch.tensor([1.0, 1.0, -1.0], dtype=torch.float64))
    r_true = euler_to_matrix(*[torch.tensor(true[c].to_numpy(np.float64))
                               for c in ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi")])
    for flipped in (False, True):
        vol = transform_volume(truth, g.float(), torch.zeros(3), oversample=2)
        r_est = r_true @ g  # est(x) = truth(G x): its projection at R·G is the truth's at R
        if flipped:
            vol, r_est = flip_hand(vol), mirror @ r_est @ mirror
        est = true.copy()
        est["rlnAngleRot"], est["rlnAngleTilt"], est["rlnAnglePsi"] = [a.numpy() for a in matrix_to_euler(r_est)]
        _, info = align_truth_by_poses(vol, truth, est, true)
        assert info["flipped"] == flipped and info["correlation"] > 0.99, info


@pytest.mark.browser
@pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary (apt-get install chromium)")
def test_browser_lists_jobs_and_shows_fsc_plot(server: str, tmp_path: Path):
    """Headless Chromium: the job list (after its script ran) names the demo's jobs; the reconstruction's
    report page shows its FSC plot (the curve's colour is on the screenshot)."""
    base = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", f"--user-data-dir={tmp_path}/u"]
    dom = subprocess.run([*base, "--virtual-time-budget=5000", "--dump-dom", server + "/"], capture_output=True,
                         text=True, timeout=120).stdout
    assert all(f">{n}<" in dom for n in ("job001", "job002", "job003")) and "finished" in dom
    shot = tmp_path / "report.png"
    subprocess.run([*base, f"--screenshot={shot}", "--window-size=1000,1400",
                    server + "/files/Reconstruct/job002/report.html"], capture_output=True, timeout=120)
    from PIL import Image
    img = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    blue = np.abs(img - np.array([31, 119, 180])).sum(-1) < 40  # matplotlib's first line colour
    assert blue.sum() > 200, blue.sum()
