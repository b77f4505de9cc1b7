"""The local web viewer of a project (``cryolens serve``): standard library ``http.server`` only.

Routes (GET and HEAD):

* ``/``: the job list with status, the verdict of finished jobs and the live progress of running
  ones; the page refreshes its
  rows every :data:`REFRESH_S` seconds from ``/api/jobs`` (and reloads itself without JavaScript);
* ``/api/jobs``: the jobs as JSON (``name``, ``stage``, ``folder``, ``status``, times in seconds,
  ``report``: the URL of the job's report or null, ``verdict`` of finished jobs
  (:mod:`cryolens.jobs.verdicts`), ``progress`` of running jobs, see
  :func:`cryolens.report.progress.job_progress`);
* ``/project``: the project report (:mod:`cryolens.report.project_report`), made on each request;
* ``/files/<path>``: a file of the project folder (job reports, their PNGs, STAR files...).

Path safety: a ``/files/`` path is percent-decoded once, then refused with 403 when it holds a
``..`` segment, a backslash, a NUL or is absolute, and when the resolved path (symbolic links
followed) is not inside the project folder; a hidden name (a leading ``.``: temporary files and
staging folders) or anything that is not a regular file gives 404. The server binds 127.0.0.1
unless told otherwise (the CLI warns for another address): it has no authentication.
"""

from __future__ import annotations

import html
import json
import mimetypes
import os
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from cryolens.jobs.verdicts import verdict
from cryolens.project.db import Project
from cryolens.report.progress import job_progress
from cryolens.report.project_report import render_project_report

__all__ = ["make_server", "safe_path", "jobs_json", "jobs_page", "REFRESH_S", "LOCALHOST", "serve_in_thread"]

REFRESH_S = 3
LOCALHOST = "127.0.0.1"
FILES = "/files/"


def safe_path(root: Path, url_path: str) -> tuple[int, Path | None]:
    """``(HTTP status, file)`` for the ``/files/`` part of a URL path (see the module docstring)."""
    rel = unquote(url_path)
    parts = rel.replace("\\", "/").split("/")
    if "\\" in rel or "\x00" in rel or rel.startswith("/") or ".." in parts or os.path.isabs(rel):
        return HTTPStatus.FORBIDDEN, None
    root = root.resolve()
    try:
        target = (root / rel).resolve()
    except (OSError, RuntimeError):
        return HTTPStatus.NOT_FOUND, None
    if target != root and root not in target.parents:
        return HTTPStatus.FORBIDDEN, None
    if any(p.startswith(".") for p in target.relative_to(root).parts) or not target.is_file():
        return HTTPStatus.NOT_FOUND, None
    return HTTPStatus.OK, target


def jobs_json(project: Project) -> list[dict[str, Any]]:
    """The job list the viewer shows (see the module docstring)."""
    out = []
    for j in project.jobs():
        folder = project.abs(j.folder)
        inside = not Path(j.folder).is_absolute()
        has_report = inside and (folder / "report.html").is_file()
        out.append({
            "name": j.name, "number": j.number, "stage": j.stage, "folder": j.folder, "status": j.status,
            "started": j.started, "ended": j.ended, "error": j.error,
            "took_s": round(j.ended - j.started, 1) if j.started and j.ended else None,
            "report": f"{FILES}{j.folder}/report.html" if has_report else None,
            "verdict": verdict(j.stage, j.results, j.params) if j.status == "finished" else None,
            "progress": job_progress(folder, params=j.params, started=j.started, heartbeat=j.heartbeat)
            if j.status == "running" else None})
    return out


_SCRIPT = """
function cell(t){const d=document.createElement('td');d.textContent=t==null?'':t;return d}
function bar(p,j){if(!p)return cell(j.verdict||j.error||'');const d=cell(p.message||'');if(p.fraction!=null){const m=document.createElement('progress');
m.max=1;m.value=p.fraction;d.prepend(m)}return d}
async function refresh(){try{const r=await fetch('/api/jobs',{cache:'no-store'});const jobs=await r.json();
const tb=document.getElementById('jobs');tb.replaceChildren();for(const j of jobs){const tr=document.createElement('tr');
const a=document.createElement('td');if(j.report){const l=document.createElement('a');l.href=j.report;
l.textContent=j.name;a.append(l)}else{a.textContent=j.name}tr.append(a,cell(j.stage));const s=cell(j.status);
s.className=j.status;tr.append(s,cell(j.took_s==null?'':j.took_s+' s'),bar(j.progress,j));tb.append(tr)}
document.getElementById('updated').textContent=new Date().toLocaleTimeString()}catch(e){}}
setInterval(refresh,REFRESH_MS);
"""


def jobs_page(project: Project) -> str:
    """The job list page (rows rendered here; the script keeps them fresh)."""
    rows = []
    for j in jobs_json(project):
        name = (f'<a href="{html.escape(j["report"])}">{j["name"]}</a>' if j["report"] else j["name"])
        prog = j["progress"]
        live = html.escape(j["verdict"] or j["error"] or "")
        if prog:
            bar = f'<progress max="1" value="{prog["fraction"]}"></progress>' if prog["fraction"] is not None else ""
            live = bar + html.escape(prog["message"])
        took = f'{j["took_s"]} s' if j["took_s"] is not None else ""
        rows.append(f'<tr><td>{name}</td><td>{html.escape(j["stage"])}</td><td class="{j["status"]}">{j["status"]}'
                    f"</td><td>{took}</td><td>{live}</td></tr>")
    title = html.escape(project.root.name)
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>cryolens: {title}</title>
<noscript><meta http-equiv="refresh" content="{REFRESH_S * 2}"></noscript>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto}}td,th{{border-bottom:1px solid #ddd;
padding:3px 8px;text-align:left}}.finished{{color:#2e7d32}}.failed,.killed{{color:#c62828}}.running{{color:#e65100}}
.queued{{color:#1565c0}}progress{{margin-right:.5em}}td:nth-child(4){{white-space:nowrap}}</style></head><body>
<h1>cryolens project {title}</h1><p><a href="/project">Project report</a> &middot; {html.escape(str(project.root))}
&middot; updated <span id="updated">now</span></p>
<table><thead><tr><th>job</th><th>stage</th><th>status</th><th>took</th><th>progress or verdict</th></tr></thead>
<tbody id="jobs">{''.join(rows)}</tbody></table>
<script>const REFRESH_MS={REFRESH_S * 1000};{_SCRIPT}</script></body></html>
"""


class _Handler(BaseHTTPRequestHandler):
    server_version = "cryolens"
    project: Project  # set on the subclass made by make_server
    quiet: bool = True

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        if not self.quiet:
            super().log_message(format, *args)

    def _send(self, status: int, body: bytes, ctype: str = "text/html; charset=utf-8", *, head: bool = False) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.end_headers()
        if not head:
            try:
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):  # the browser left (reload, closed tab): nothing to do
                pass

    def _error(self, status: int, *, head: bool) -> None:
        text = {403: "403 forbidden: outside the project", 404: "404 not found"}.get(status, str(status))
        self._send(status, text.encode(), "text/plain; charset=utf-8", head=head)

    def _route(self, head: bool) -> None:
        path = urlsplit(self.path).path
        if path in ("/", "/index.html"):
            return self._send(200, jobs_page(self.project).encode(), head=head)
        if path == "/api/jobs":
            return self._send(200, json.dumps(jobs_json(self.project)).encode(), "application/json", head=head)
        if path == "/project":
            return self._send(200, render_project_report(self.project, prefix=FILES).encode(), head=head)
        if not path.startswith(FILES):
            return self._error(404, head=head)
        status, target = safe_path(self.project.root, path[len(FILES):])
        if target is None:
            return self._error(status, head=head)
        ctype = mimetypes.guess_type(target.name)[0] or "application/octet-stream"
        if ctype.startswith("text/"):
            ctype += "; charset=utf-8"
        self._send(200, target.read_bytes(), ctype, head=head)

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self._route(False)

    def do_HEAD(self) -> None:  # noqa: N802 - http.server's name
        self._route(True)


def make_server(project: Project, *, host: str = LOCALHOST, port: int = 8000, quiet: bool = True) -> ThreadingHTTPServer:
    """A threading HTTP server for ``project`` bound to ``host:port`` (port 0: any free port; see
    ``server.server_address``). Call ``serve_forever()``; ``shutdown()`` from another thread stops it."""
    handler = type("ProjectHandler", (_Handler,), {"project": project, "quiet": quiet})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    return server


def serve_in_thread(project: Project, *, host: str = LOCALHOST, port: int = 0) -> tuple[ThreadingHTTPServer, str]:
    """Start a server in a daemon thread; returns it and its base URL (tests, notebooks)."""
    server = make_server(project, host=host, port=port)
    threading.Thread(target=server.serve_forever, name="cryolens-serve", daemon=True).start()
    h, p = server.server_address[:2]
    return server, f"http://{h}:{p}"
