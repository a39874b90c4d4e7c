"""``ai-node web``: a small read-only web page over the follow-up record.

Routes (GET and HEAD only; anything else 405, unknown paths 404):

- ``/``: the patient list (PatientID, name, number of studies, last study
  date, latest RANO-BM response) with links;
- ``/patients/<PatientID>``: the patient's report, the very page that
  ``ai-node followup report`` writes (:func:`node.report_html.render`);
- ``/api/patients`` and ``/api/patients/<PatientID>``: the JSON behind them
  (:func:`storage.followup.patient_report`'s dict plus the report's time
  points and tracks).

PatientIDs are URL-decoded and looked up in the database, never used as a path.
Every response is PHI: ``Cache-Control: no-store``, a ``Content-Security-Policy``
that allows nothing but inline styles and ``data:`` images (what the
self-contained report needs), no referrer.  The server binds to loopback by
default; bound to any other address it refuses to start without a token
(``--token`` or ``$AINODE_WEB_TOKEN``) or TLS (``--tls-cert`` and ``--tls-key``:
HTTPS, the key owner-only, at least ``tls.minimum_version``; a token is still
advised, since TLS alone authenticates nobody).  With a token every request must
carry ``Authorization: Bearer <token>`` or ``?token=<token>`` (401 otherwise).  One
log line per request at INFO names the route, never the patient.

The server does not write: patients recorded before tracking existed are shown
without tracks until ``ai-node followup export``/``report`` or the next run
tracks them.  No torch, no inference here.
"""

from __future__ import annotations

import hmac
import html
import ipaddress
import json
import logging
import os
import signal
import socket
import ssl
import sys
import threading
import time
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType
from typing import Any, Literal
from urllib.parse import parse_qs, quote, unquote, urlsplit

from config.errors import ConfigError
from config.schema import NodeConfig, Tls
from node.tls import server_context

LOGGER = logging.getLogger(__name__)

#: the environment variable holding the token (below --token)
TOKEN_ENVIRONMENT = "AINODE_WEB_TOKEN"
ALLOWED_METHODS = "GET, HEAD"
#: seconds a client has to finish the TLS handshake
HANDSHAKE_TIMEOUT = 10.0
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src data:; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "Pragma": "no-cache",
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}
#: pyplot (the report's plot) is not thread-safe: one page is drawn at a time
_PLOT_LOCK = threading.Lock()
LIST_CSS = """
body{font-family:DejaVu Sans,Arial,sans-serif;margin:24px;color:#222}
h1{font-size:22px;margin:0 0 8px}
.disclaimer{background:#fff3cd;border:1px solid #e0c36c;padding:6px 10px;margin:8px 0}
table{border-collapse:collapse;margin:6px 0 14px;font-size:14px}
th,td{border:1px solid #bbb;padding:4px 10px;text-align:left}th{background:#eef}
.CR{background:#d9f0d3}.PR{background:#e5f5e0}.SD{background:#fee8c8}.PD{background:#fcbba1}
"""


class WebError(Exception):
    """The command cannot start (a sentence for the administrator)."""


def is_loopback(host: str) -> bool:
    """True when every address ``host`` names is a loopback address."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except OSError:
        return False
    addresses = {str(info[4][0]).split("%")[0] for info in infos}
    return bool(addresses) and all(ipaddress.ip_address(a).is_loopback for a in addresses)


def resolve_token(given: str | None, environ: dict[str, str] | None = None) -> str | None:
    """--token, else $AINODE_WEB_TOKEN; an empty token is none."""
    env = os.environ if environ is None else environ
    token = given if given is not None else env.get(TOKEN_ENVIRONMENT)
    return token or None


def check_bind(bind: str, token: str | None, tls: bool = False) -> None:
    """Refuse (:class:`WebError`) a non-loopback address with neither a token nor TLS,
    before binding."""
    if token is None and not tls and not is_loopback(bind):
        raise WebError(
            f"refusing to serve patient data on {bind}, which is not a loopback address, "
            f"without a token or TLS: give --token or ${TOKEN_ENVIRONMENT}, and/or "
            "--tls-cert and --tls-key (or bind 127.0.0.1)"
        )


def tls_context(
    certificate: Path | None,
    private_key: Path | None,
    minimum_version: Literal["TLSv1.2", "TLSv1.3"] = "TLSv1.2",
) -> ssl.SSLContext | None:
    """The HTTPS context of ``--tls-cert``/``--tls-key`` (both or neither), else None.

    Raises :class:`WebError` for one without the other, :class:`ConfigError` for a key
    others can read or a pair that does not load (:func:`node.tls.server_context`)."""
    if certificate is None and private_key is None:
        return None
    if certificate is None or private_key is None:
        raise WebError("--tls-cert and --tls-key go together")
    settings = Tls(
        certificate=certificate, private_key=private_key, minimum_version=minimum_version
    )
    return server_context(settings)


# --- data -------------------------------------------------------------------------------------


def patient_list() -> list[dict[str, Any]]:
    """One row per patient: PatientID, name, studies, last study date, latest response."""
    import peewee

    from storage.followup import Patient, SegmentationRun, Series, Study
    from storage.rano import RanoAssessment

    per_patient: Any = (
        Study.select(Study.patient, peewee.fn.COUNT(Study.id), peewee.fn.MAX(Study.study_date))
        .group_by(Study.patient)
        .tuples()
    )
    counts: dict[int, tuple[int, str | None]] = {
        int(patient): (int(count), last) for patient, count, last in per_patient
    }
    rows = []
    for patient in Patient.select().order_by(Patient.patient_id):
        latest = (
            RanoAssessment.select(RanoAssessment.response, Study.study_date)
            .join(SegmentationRun)
            .join(Series)
            .join(Study)
            .where(RanoAssessment.patient == patient)
            .order_by(Study.study_date.desc(), SegmentationRun.updated_at.desc())
            .objects()
            .first()
        )
        count, last = counts.get(patient.id, (0, None))
        rows.append(
            {
                "patient_id": patient.patient_id,
                "patient_name": patient.patient_name,
                "studies": int(count),
                "last_study_date": last or None,
                "latest_response": latest.response if latest is not None else None,
                "latest_response_study_date": latest.study_date if latest is not None else None,
            }
        )
    return rows


def patient_json(patient_id: str) -> dict[str, Any] | None:
    """patient_report's dict plus the report's time points and tracks; None if unknown."""
    from storage.followup import patient_report
    from storage.summary import patient_summary

    report = patient_report(patient_id)
    summary = patient_summary(patient_id, retrack=False)
    if report is None or summary is None:
        return None
    return {**report, "time_points": summary["time_points"], "tracks": summary["tracks"]}


def patient_page(patient_id: str) -> str | None:
    """The report page (node.report_html.render), or None if unknown."""
    from node.report_html import render
    from storage.summary import patient_summary

    summary = patient_summary(patient_id, retrack=False)
    if summary is None:
        return None
    with _PLOT_LOCK:
        return render(summary)


def list_page(rows: list[dict[str, Any]], token_query: str = "") -> str:
    """The patient list as one self-contained page."""
    from node.report_html import disclaimer

    def date(value: str | None) -> str:
        text = value or ""
        return f"{text[:4]}-{text[4:6]}-{text[6:]}" if len(text) == 8 else (text or "-")

    body = [
        "<table id='patients'><tr><th>PatientID</th><th>Name</th><th>Studies</th>"
        "<th>Last study</th><th>Latest RANO-BM response</th></tr>"
    ]
    for row in rows:
        response = row["latest_response"] or "-"
        link = f"/patients/{quote(row['patient_id'], safe='')}{token_query}"
        body.append(
            f"<tr class='patient'><td><a href='{html.escape(link)}'>"
            f"{html.escape(row['patient_id'])}</a></td>"
            f"<td>{html.escape(row['patient_name'] or '')}</td><td>{row['studies']}</td>"
            f"<td>{date(row['last_study_date'])}</td>"
            f"<td class='{html.escape(response)}'>{html.escape(response)}</td></tr>"
        )
    body.append("</table>")
    if not rows:
        body.append("<p id='empty'>No patient in the follow-up record.</p>")
    return "\n".join(
        [
            "<!DOCTYPE html><html><head><meta charset='utf-8'>",
            f"<title>AI node: patients</title><style>{LIST_CSS}</style></head><body>",
            f"<h1>Patients ({len(rows)})</h1>",
            f"<div class='disclaimer'>{html.escape(disclaimer())}</div>",
            *body,
            "</body></html>",
        ]
    )


# --- HTTP -------------------------------------------------------------------------------------


class Handler(BaseHTTPRequestHandler):
    """GET/HEAD of the four routes; the token check first."""

    server_version = "ai-node-web"
    sys_version = ""
    token: bytes | None = None  # set on the subclass made by make_server

    def do_GET(self) -> None:
        self._serve(body=True)

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def __getattr__(self, name: str) -> Callable[[], None]:
        """Every other method (POST, PUT, DELETE, OPTIONS, anything) is 405."""
        if name.startswith("do_"):
            return self._not_allowed
        raise AttributeError(name)

    def _not_allowed(self) -> None:
        self._started = time.monotonic()
        self._route = route_of(urlsplit(self.path).path)
        if self._authorised() is None:
            self._send(HTTPStatus.UNAUTHORIZED, "text/plain", b"401 unauthorised\n", True)
            return
        self._send(
            HTTPStatus.METHOD_NOT_ALLOWED,
            "text/plain",
            b"405 method not allowed\n",
            True,
            {"Allow": ALLOWED_METHODS},
        )

    def log_message(self, format: str, *args: Any) -> None:
        """Silence http.server's own lines: they name the path (a PatientID)."""

    def _authorised(self) -> str | None:
        """None when a token is required and missing or wrong; else the query to keep in links."""
        if self.token is None:
            return ""
        header = self.headers.get("Authorization", "")
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(
            value.strip().encode("utf-8"), self.token
        ):
            return ""
        given = parse_qs(urlsplit(self.path).query).get("token", [])
        if given and hmac.compare_digest(given[0].encode("utf-8"), self.token):
            return "?token=" + quote(given[0], safe="")
        return None

    def _serve(self, body: bool) -> None:
        self._started = time.monotonic()
        self._route = route_of(urlsplit(self.path).path)
        token_query = self._authorised()
        if token_query is None:
            self._send(
                HTTPStatus.UNAUTHORIZED,
                "text/plain",
                b"401 unauthorised: give Authorization: Bearer <token> or ?token=\n",
                body,
                {"WWW-Authenticate": 'Bearer realm="ai-node"'},
            )
            return
        path = urlsplit(self.path).path
        try:
            found = self._route_to(path, token_query)
        except Exception as exc:  # noqa: BLE001 - one failed request must not stop the server
            LOGGER.error("web: %s %s failed: %s", self.command, self._route, type(exc).__name__)
            LOGGER.debug("web: traceback", exc_info=True)
            self._send(HTTPStatus.INTERNAL_SERVER_ERROR, "text/plain", b"500\n", body)
            return
        if found is None:
            self._send(HTTPStatus.NOT_FOUND, "text/plain", b"404 not found\n", body)
            return
        content_type, payload = found
        self._send(HTTPStatus.OK, content_type, payload, body)

    def _route_to(self, path: str, token_query: str) -> tuple[str, bytes] | None:
        from storage.models import connected

        html_type, json_type = "text/html; charset=utf-8", "application/json"
        with connected():
            if self._route == "/":
                return html_type, list_page(patient_list(), token_query).encode("utf-8")
            if self._route == "/api/patients":
                return json_type, _json(patient_list())
            if self._route == "/api/patients/<id>":
                data = patient_json(unquote(path[len("/api/patients/") :]))
                return None if data is None else (json_type, _json(data))
            if self._route == "/patients/<id>":
                page = patient_page(unquote(path[len("/patients/") :]))
                return None if page is None else (html_type, page.encode("utf-8"))
        return None

    def _send(
        self,
        status: HTTPStatus,
        content_type: str,
        payload: bytes,
        body: bool,
        extra: dict[str, str] | None = None,
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        for name, value in {**SECURITY_HEADERS, **(extra or {})}.items():
            self.send_header(name, value)
        self.end_headers()
        LOGGER.info(  # before the body: a client that has it may stop the server at once
            "web: %s %s %d %d bytes %.0f ms from %s",
            self.command,
            self._route,
            status,
            len(payload) if body else 0,
            1000 * (time.monotonic() - self._started),
            self.client_address[0],
        )
        if body:
            self.wfile.write(payload)


def route_of(path: str) -> str:
    """The route a path takes, as logged: never the PatientID itself."""
    if path in ("/", "/api/patients"):
        return path
    for prefix in ("/api/patients/", "/patients/"):
        if path.startswith(prefix) and len(path) > len(prefix):
            return prefix + "<id>"
    return "<other>"


def _json(data: Any) -> bytes:
    return (json.dumps(data, indent=2) + "\n").encode("utf-8")


class _Server(ThreadingHTTPServer):
    """Plain HTTP, or HTTPS when ``tls`` is set: each connection's TLS handshake runs in
    its own request thread (with a deadline), so a slow client never holds the accept loop."""

    tls: ssl.SSLContext | None = None
    daemon_threads = True

    def finish_request(self, request: Any, client_address: Any) -> None:
        if self.tls is None:
            super().finish_request(request, client_address)
            return
        request.settimeout(HANDSHAKE_TIMEOUT)
        try:
            secure = self.tls.wrap_socket(request, server_side=True)
        except OSError as exc:  # ssl.SSLError included
            LOGGER.info("web: TLS handshake from %s failed: %s", client_address[0], exc)
            return
        try:
            secure.settimeout(None)
            super().finish_request(secure, client_address)
        finally:
            secure.close()


def make_server(
    bind: str, port: int, token: str | None, tls: ssl.SSLContext | None = None
) -> ThreadingHTTPServer:
    """Bind (after :func:`check_bind`); the handler class carries the token."""
    check_bind(bind, token, tls is not None)
    handler = type("TokenHandler", (Handler,), {"token": token.encode("utf-8") if token else None})
    family = socket.AF_INET6 if ":" in bind else socket.AF_INET
    server_class = type("Server", (_Server,), {"address_family": family, "tls": tls})
    server: ThreadingHTTPServer = server_class((bind, port), handler)
    return server


class _Stop(Exception):
    pass


def _stop(signum: int, frame: FrameType | None) -> None:
    raise _Stop


def run(
    config: NodeConfig,
    bind: str,
    port: int,
    token: str | None,
    tls_cert: Path | None = None,
    tls_key: Path | None = None,
) -> int:
    """The ``ai-node web`` command: 0 on a clean stop (SIGINT, SIGTERM), 2 when refused."""
    from storage.db import init_database
    from storage.models import open_thread_connection

    token = resolve_token(token)
    try:
        tls = tls_context(tls_cert, tls_key, config.tls.minimum_version)
        check_bind(bind, token, tls is not None)
    except (WebError, ConfigError) as exc:
        print(f"ai-node web: {exc}", file=sys.stderr)
        return 2
    if tls is not None and token is None and not is_loopback(bind):
        LOGGER.warning(
            "web: HTTPS on %s without a token: anyone who reaches it can read the record", bind
        )
    init_database(config.database_path, config.database_url)
    open_thread_connection()  # held for the server's life: request threads come and go
    try:
        server = make_server(bind, port, token, tls)
    except OSError as exc:
        print(f"ai-node web: cannot listen on {bind}:{port}: {exc.strerror}", file=sys.stderr)
        return 2
    host, real_port = str(server.server_address[0]), int(server.server_address[1])
    LOGGER.info(
        "web: serving the follow-up record read-only on %s://%s:%d/ (%s)",
        "https" if tls else "http",
        f"[{host}]" if ":" in host else host,
        real_port,
        "token required" if token else ("no token" if tls else "no token: loopback only"),
    )
    signal.signal(signal.SIGTERM, _stop)
    try:
        server.serve_forever()
    except (KeyboardInterrupt, _Stop):
        LOGGER.info("web: stopped")
    finally:
        server.server_close()
    return 0
