"""``--http-port PORT``: the read-only HTTP server of the live view.

``/`` the live page, ``/status`` its data as JSON, ``/metrics`` Prometheus
text, ``/latest.png`` the latest image as a picture (log scale, colour map,
downscaled; ``?scale=linear&cmap=gray&region=r0,r1,c0,c1``), ``/latest.tiff``
the latest image in full as received. Only GET and HEAD.

Each request runs on its own thread and reads the latest image by reference
when asked: a slow or absent browser costs the stream nothing, and the
picture of one image is rendered once per set of view parameters.
"""
from __future__ import annotations

import io
import json
import logging
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Dict, Optional, Tuple
from urllib.parse import parse_qs, urlsplit

import tifffile

from eiger_server.observe import png
from eiger_server.observe.metrics import CONTENT_TYPE

log = logging.getLogger(__name__)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: Tuple[str, int], live: "LiveServer") -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.live = live
        super().__init__(address, _Handler)


class LiveServer:
    """The HTTP server on its own thread, bound like ``--bind``."""

    def __init__(self, observation: Any, bind: str, port: int) -> None:
        self.observation = observation
        try:
            self._server = _Server((bind, int(port)), self)
        except OSError as exc:
            raise OSError(f"--http-port {port}: cannot listen on {bind or 'all interfaces'}: "
                          f"{exc.strerror or exc}; choose another port") from None
        self.port = self._server.server_address[1]
        host = bind or "127.0.0.1"
        self.url = f"http://[{host}]:{self.port}/" if ":" in host else \
            f"http://{host if host not in ('0.0.0.0', '') else '127.0.0.1'}:{self.port}/"
        self._png_lock = threading.Lock()
        self._png_cache: Dict[tuple, Tuple[bytes, int]] = {}
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True,
                                        name="observe-http")
        self._thread.start()
        log.info("live view at %s", self.url)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(2)

    def latest(self) -> Optional[tuple]:
        return self.observation.observer.latest

    def picture(self, query: Dict[str, str]) -> Optional[Tuple[bytes, int, int]]:
        """(PNG, image id, downscale factor) of the latest image, cached per parameters."""
        latest = self.latest()
        if latest is None:
            return None
        ident, image, _ = latest
        region = None
        if query.get("region"):
            try:
                region = tuple(int(v) for v in query["region"].split(","))
            except ValueError:
                raise ValueError("region must be r0,r1,c0,c1 (rows and columns, inclusive)") from None
            if len(region) != 4:
                raise ValueError("region must be r0,r1,c0,c1 (rows and columns, inclusive)")
        key = (ident, query.get("scale", "log"), query.get("cmap", "viridis"), region)
        with self._png_lock:           # one render at a time: browsers cannot pile up work
            cached = self._png_cache.get(key)
            if cached is None:
                cached = png.render(image, scale=key[1], cmap=key[2], region=region)
                self._png_cache = {key: cached}
        return cached[0], ident, cached[1]


class _Handler(BaseHTTPRequestHandler):
    server_version = "eiger_server-live"
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt: str, *args: Any) -> None:
        log.debug("http %s: " + fmt, self.client_address[0], *args)

    def do_HEAD(self) -> None:
        self.do_GET(head=True)

    def do_GET(self, head: bool = False) -> None:
        live: LiveServer = self.server.live       # type: ignore[attr-defined]
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        try:
            if url.path in ("/", "/index.html"):
                self._reply(200, "text/html; charset=utf-8", PAGE.encode(), head)
            elif url.path == "/status":
                body = json.dumps(live.observation.status(), default=str).encode()
                self._reply(200, "application/json", body, head)
            elif url.path == "/metrics":
                self._reply(200, CONTENT_TYPE, live.observation.metrics.text(), head)
            elif url.path == "/latest.png":
                picture = live.picture(query)
                if picture is None:
                    self._reply(404, "text/plain", b"no image yet\n", head)
                else:
                    self._reply(200, "image/png", picture[0], head,
                                {"X-Image-Id": str(picture[1]),
                                 "X-Downscale": str(picture[2])})
            elif url.path == "/latest.tiff":
                self._tiff(live, head)
            else:
                self._reply(404, "text/plain", b"not found: / /status /metrics /latest.png "
                            b"/latest.tiff\n", head)
        except ValueError as exc:
            self._reply(400, "text/plain", f"{exc}\n".encode(), head)
        except (BrokenPipeError, ConnectionResetError):
            pass                                    # the browser went away
        except Exception as exc:                    # a page must never take the server down
            log.exception("http %s failed", url.path)
            try:
                self._reply(500, "text/plain", f"{exc}\n".encode(), head)
            except OSError:
                pass

    def _tiff(self, live: LiveServer, head: bool) -> None:
        latest = live.latest()
        if latest is None:
            self._reply(404, "text/plain", b"no image yet\n", head)
            return
        ident, image, meta = latest
        buffer = io.BytesIO()
        tifffile.imwrite(buffer, image, description=json.dumps(
            {"series": meta.get("series"), "frame": meta.get("frame")}, default=str))
        series, frame = meta.get("series"), meta.get("frame")
        self._reply(200, "image/tiff", buffer.getvalue(), head,
                    {"X-Image-Id": str(ident), "Content-Disposition":
                     f'inline; filename="latest_{series}_{frame}.tiff"'})

    def _method_not_allowed(self) -> None:
        self._reply(405, "text/plain", b"read-only: GET and HEAD only\n", False,
                    {"Allow": "GET, HEAD"})

    do_POST = do_PUT = do_DELETE = do_PATCH = _method_not_allowed

    def _reply(self, code: int, ctype: str, body: bytes, head: bool,
               headers: Optional[Dict[str, str]] = None) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if not head:
            self.wfile.write(body)


PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>eiger_server live view</title>
<style>
body{font-family:sans-serif;margin:0;background:#1e1e1e;color:#ddd;display:flex}
#view{flex:1;padding:8px}
#frame{position:relative;display:inline-block;background:#000;cursor:crosshair}
#live{display:block;image-rendering:pixelated;width:calc(100vw - 340px);height:auto}
aside{width:300px;padding:8px;background:#2a2a2a;height:100vh;box-sizing:border-box;
 overflow:auto}
table{border-collapse:collapse;width:100%}td{padding:2px 4px}td:first-child{color:#999}
#errors{font-size:12px;color:#f99;white-space:pre-wrap}
.bar{margin-bottom:6px}button,select{background:#444;color:#ddd;border:1px solid #666}
</style></head><body>
<div id="view">
 <div class="bar">scale <select id="scale"><option>log</option><option>linear</option>
 </select> colours <select id="cmap"><option>viridis</option><option>inferno</option>
 <option>gray</option></select> <button id="zoomout">zoom out</button>
 <button id="reset">full image</button> <span id="imageinfo">no image yet</span></div>
 <div id="frame"><img id="live" alt="latest image" title="click: zoom in here"></div>
</div>
<aside><h3>eiger_server</h3><table>
<tr><td>state</td><td id="state">?</td></tr>
<tr><td>series</td><td id="series">?</td></tr>
<tr><td>images collected</td><td id="images_collected">?</td></tr>
<tr><td>received</td><td id="received">?</td></tr>
<tr><td>dropped</td><td id="dropped">?</td></tr>
<tr><td>frames/s</td><td id="fps">?</td></tr>
<tr><td>MB/s</td><td id="mbps">?</td></tr>
<tr><td>queue</td><td id="queue">?</td></tr>
<tr><td>free disk</td><td id="disk">?</td></tr>
<tr><td>data directory</td><td id="directory">?</td></tr>
<tr><td>latest file</td><td id="latest_file">?</td></tr>
</table><h4>last errors</h4><div id="errors">none</div></aside>
<script>
"use strict";
const $ = (id) => document.getElementById(id);
const img = $("live");
let shown = null, loading = false, region = null, full = null, lastLoad = 0;
const MIN_MS = 250;          // at most 4 pictures a second
function gb(n){return n==null?"?":(n/1e9).toFixed(1)+" GB";}
function query(){
  let q = "scale="+$("scale").value+"&cmap="+$("cmap").value;
  if(region) q += "&region="+region.join(",");
  return q;
}
function load(id){
  if(loading) return;
  loading = true; lastLoad = Date.now();
  const want = id+"|"+query();
  const next = new Image();
  next.onload = () => { img.src = next.src; img.dataset.imageId = id; shown = want;
                        loading = false; };
  next.onerror = () => { loading = false; };
  next.src = "/latest.png?"+query()+"&id="+id;
}
function show(s){
  $("state").textContent = s.state + (s.counting ? " (counting)" : "");
  $("series").textContent = s.series==null ? "none" : s.series;
  $("images_collected").textContent = s.images_collected;
  $("received").textContent = s.received;
  const by = Object.entries(s.dropped_by_cause||{}).filter(e=>e[1]).map(e=>e[0]+" "+e[1]);
  $("dropped").textContent = s.dropped + (by.length ? " ("+by.join(", ")+")" : "");
  $("fps").textContent = s.fps; $("mbps").textContent = s.mbps;
  const c = s.counters||{};
  $("queue").textContent = (c.queue||0)+" / "+(c.queue_depth||"?");
  $("disk").textContent = gb(s.free_disk_bytes);
  $("directory").textContent = s.data_directory||"";
  $("latest_file").textContent = s.latest_file||"";
  $("errors").textContent = (s.errors||[]).map(e=>e.time+" "+e.message).join("\\n")||"none";
  document.body.dataset.series = s.series==null ? "" : s.series;
  if(s.image){
    full = s.image.shape;
    $("imageinfo").textContent = "frame "+s.image.frame+" of series "+s.image.series+", "+
      s.image.shape[1]+" x "+s.image.shape[0]+" "+s.image.dtype+
      (region ? ", rows "+region[0]+"-"+region[1]+" cols "+region[2]+"-"+region[3] : "");
    if(s.image.id+"|"+query() !== shown && Date.now()-lastLoad >= MIN_MS) load(s.image.id);
  }
}
function poll(){
  fetch("/status",{cache:"no-store"}).then(r=>r.json()).then(show).catch(()=>{})
    .finally(()=>setTimeout(poll, 300));
}
img.addEventListener("click", (ev) => {
  if(!full) return;
  const r = region || [0, full[0]-1, 0, full[1]-1];
  const rows = r[1]-r[0]+1, cols = r[3]-r[2]+1;
  const y = r[0] + Math.floor(ev.offsetY/img.clientHeight*rows);
  const x = r[2] + Math.floor(ev.offsetX/img.clientWidth*cols);
  const h = Math.max(8, Math.floor(rows/4)), w = Math.max(8, Math.floor(cols/4));
  region = [Math.max(0,y-h), Math.min(full[0]-1,y+h), Math.max(0,x-w), Math.min(full[1]-1,x+w)];
  shown = null;
});
$("zoomout").onclick = () => {
  if(!region||!full) return;
  const cy=(region[0]+region[1])/2, cx=(region[2]+region[3])/2;
  const h=(region[1]-region[0]+1), w=(region[3]-region[2]+1);
  region=[Math.max(0,Math.floor(cy-h)),Math.min(full[0]-1,Math.ceil(cy+h)),
          Math.max(0,Math.floor(cx-w)),Math.min(full[1]-1,Math.ceil(cx+w))];
  if(region[0]==0&&region[2]==0&&region[1]==full[0]-1&&region[3]==full[1]-1) region=null;
  shown=null;
};
$("reset").onclick = () => { region = null; shown = null; };
$("scale").onchange = $("cmap").onchange = () => { shown = null; };
poll();
</script></body></html>
"""
