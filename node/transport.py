"""The SCP's transport: pynetdicom's association server with the limits of :mod:`node.limits`.

pynetdicom's :class:`~pynetdicom.transport.ThreadedAssociationServer` trusts a
connection from its accept on: the TLS handshake runs in the accept loop (one
silent client stalls every other), a connection that never sends its
A-ASSOCIATE-RQ counts as an association, a read has no deadline, and a PDU is
read whole whatever length it declares.  Here, in order:

1. **accept** (server thread): the per-host and pending-pool limits, else the
   socket is closed at once; no handshake, no read;
2. **connection thread**: the TLS handshake, bounded by the negotiation deadline;
   then pynetdicom's association, its socket wrapped in :class:`GuardedSocket`
   (every PDU header checked before its body is read, every read bounded by
   ``network.network_timeout``);
3. **EVT_REQUESTED** (:mod:`node.handlers`): access control, then :func:`admit`
   takes an association slot or rejects (transient, local limit exceeded);
4. **deadline** (``service_actions``, every half second): a connection not yet
   admitted ``network.negotiation_timeout`` seconds after its accept is shut down,
   and its association thread woken to end;
5. **end**: the slot is given back when the association is released or aborted,
   the per-host count when its thread ends; a partially received data set file is
   removed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import ssl
import tempfile
import threading
import time
import zlib
from copy import deepcopy
from datetime import datetime
from pathlib import Path
from typing import Any, cast

from pydicom.uid import DeflatedExplicitVRLittleEndian
from pynetdicom import AE, _config, dimse_messages, evt
from pynetdicom.association import Association
from pynetdicom.events import Event
from pynetdicom.transport import (
    AssociationSocket,
    RequestHandler,
    ThreadedAssociationServer,
)
from pynetdicom.utils import make_target

from common.durable import make_dirs_durably
from config.schema import NodeConfig
from node import tls
from node.limits import (
    MIB,
    Connection,
    ConnectionTable,
    LimitExceeded,
    Limits,
    PduGuard,
    inflated_size_exceeds,
)
from storage.spool import Spool, SpooledData

LOGGER = logging.getLogger(__name__)

#: A-ABORT PDU, source 0x02 (service provider), reason 0x00 (not specified)
A_ABORT_PDU = bytes((0x07, 0, 0, 0, 0, 4, 0, 0, 0x02, 0x00))


class GuardedSocket(AssociationSocket):
    """pynetdicom's socket wrapper, reading through a :class:`PduGuard`."""

    def __init__(self, assoc: Association, client_socket: socket.socket, guard: PduGuard) -> None:
        super().__init__(assoc, client_socket=client_socket)
        self.guard = guard

    def recv(self, nr_bytes: int) -> bytearray:
        """pynetdicom's DUL reads each PDU as ``recv(6)`` then ``recv(length)``."""
        try:
            if self.guard.expects_body:
                data = super().recv(nr_bytes)
                self.guard.body(data)  # may replace an invalid AE title in place
            else:
                data = super().recv(nr_bytes)
                self.guard.header(bytes(data))
            return data
        except LimitExceeded as exc:
            self._refuse(exc)
            raise

    def _refuse(self, exc: LimitExceeded) -> None:
        requestor = self.assoc.requestor
        LOGGER.warning("association from %s:%s aborted: %s", requestor.address, requestor.port, exc)
        try:
            cast(socket.socket, self.socket).sendall(A_ABORT_PDU)
        except OSError:
            pass


class NodeAssociation(Association):
    """An acceptor association that gives its connection back when its thread ends."""

    connection: Connection
    table: ConnectionTable

    def run(self) -> None:
        try:
            super().run()
        finally:
            self.table.close(self.connection)
            _remove_partial_dataset(self)


def _remove_partial_dataset(assoc: Association) -> None:
    """A C-STORE data set cut off mid-way leaves pynetdicom's temporary file behind."""
    message = getattr(assoc.dimse, "message", None)
    partial = getattr(message, "_data_set_file", None)
    if partial is None:
        return
    try:
        partial.close()
        os.unlink(partial.name)
    except OSError:
        pass


class NodeRequestHandler(RequestHandler):
    """Creates a :class:`NodeAssociation` on a :class:`GuardedSocket` (pynetdicom's, adapted)."""

    server: NodeAssociationServer

    def _create_association(self) -> Association:
        connection = self.server.connection_of(self.request)
        assoc = NodeAssociation(self.ae, "acceptor")
        assoc.connection, assoc.table = connection, self.server.connections
        connection.assoc = assoc
        assoc._server = self.server
        assoc.name = f"AcceptorThread@{datetime.now():%Y%m%d%H%M%S}"
        guard = PduGuard(self.server.limits, lambda: _is_streaming(assoc))
        assoc.set_socket(GuardedSocket(assoc, cast(socket.socket, self.request), guard))
        assoc.acceptor.maximum_length = self.ae.maximum_pdu_size
        assoc.acceptor.ae_title = self.server.ae_title
        assoc.acceptor.address_info = self.local
        assoc.acceptor.implementation_class_uid = self.ae.implementation_class_uid
        assoc.acceptor.implementation_version_name = self.ae.implementation_version_name
        assoc.acceptor.supported_contexts = deepcopy(self.server.contexts)
        assoc.requestor.address_info = self.remote
        for event, handlers in self.server._handlers.items():
            if event.is_intervention and handlers:
                assoc.bind(event, *handlers)
            elif isinstance(event, evt.NotificationEvent):
                for handler, args in cast(list[tuple[Any, Any]], handlers):
                    assoc.bind(event, handler, args)
        return assoc


def _is_streaming(assoc: Association) -> bool:
    message = getattr(assoc.dimse, "message", None)
    return getattr(message, "_data_set_file", None) is not None


class NodeAssociationServer(ThreadedAssociationServer):
    """pynetdicom's threaded server with the connection limits and deadlines."""

    def __init__(
        self, *args: Any, connections: ConnectionTable, network_timeout: float, **kwargs: Any
    ) -> None:
        self.limits = connections.limits
        self.network_timeout = network_timeout
        self.connections = connections  # shared by every listener of the node
        self._accepted: dict[int, Connection] = {}
        self._accepted_lock = threading.Lock()
        self._last_refusal_log = 0.0
        kwargs["request_handler"] = NodeRequestHandler
        super().__init__(*args, **kwargs)

    def _bind_defaults(self) -> None:
        super()._bind_defaults()
        for event in (evt.EVT_RELEASED, evt.EVT_ABORTED, evt.EVT_REJECTED):
            self.bind(event, _association_over)

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        """Accept, apply the per-host and pending limits; the TLS handshake comes later."""
        sock, address = cast(socket.socket, self.socket).accept()
        connection = self.connections.accept(str(address[0]), int(address[1]))
        if isinstance(connection, str):
            self._log_refusal(f"{address[0]}:{address[1]}", connection)
            _close(sock)
            raise OSError(connection)  # socketserver skips the request
        connection.sock = sock
        with self._accepted_lock:
            self._accepted[id(sock)] = connection
        return sock, address

    def connection_of(self, sock: object) -> Connection:
        with self._accepted_lock:
            return self._accepted[id(sock)]

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        """In the connection's own thread: handshake, then pynetdicom's association."""
        connection = self.connection_of(request)
        started = False
        try:
            sock = self._handshake(request, connection) if self.ssl_context else request
            sock.settimeout(self.network_timeout)
            if sock is not request:
                with self._accepted_lock:
                    self._accepted[id(sock)] = connection
            connection.sock = sock
            self.finish_request(sock, client_address)
            started = True
        except (OSError, ValueError) as exc:
            LOGGER.warning("connection from %s closed: %s", connection.name, _describe(exc))
        except Exception:
            LOGGER.exception("connection from %s failed", connection.name)
        finally:
            with self._accepted_lock:
                self._accepted.pop(id(request), None)
                self._accepted.pop(id(connection.sock), None)
            if not started:
                _close(connection.sock)
                self.connections.close(connection)

    def _handshake(self, sock: socket.socket, connection: Connection) -> socket.socket:
        context = cast(ssl.SSLContext, self.ssl_context)
        wrapped = context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        connection.sock = wrapped
        wrapped.settimeout(max(connection.deadline - time.monotonic(), 0.01))
        wrapped.do_handshake()
        return wrapped

    def service_actions(self) -> None:
        """Called by ``serve_forever`` about every half second: drop late negotiators."""
        super().service_actions()
        for connection in self.connections.expired(time.monotonic()):
            LOGGER.warning(
                "connection from %s closed: no association within %.0f s "
                "(network.negotiation_timeout)",
                connection.name,
                self.limits.negotiation_timeout,
            )
            _drop(connection)

    def _log_refusal(self, name: str, reason: str) -> None:
        now = time.monotonic()
        if now - self._last_refusal_log >= 1.0:  # a flood gets one line a second
            self._last_refusal_log = now
            LOGGER.warning("connection from %s refused: %s", name, reason)


def _association_over(event: Event) -> None:
    """EVT_RELEASED / EVT_ABORTED / EVT_REJECTED: the association slot is free again."""
    assoc = event.assoc
    if isinstance(assoc, NodeAssociation):
        assoc.table.finish(assoc.connection)


def invalid_ae_title(assoc: Association) -> tuple[str, str] | None:
    """The A-ASSOCIATE-RQ's invalid AE title that the guard replaced: ("called" | "calling",
    why), or None (see :class:`node.limits.PduGuard`)."""
    sock = assoc.dul.socket
    return sock.guard.invalid_ae_title if isinstance(sock, GuardedSocket) else None


def is_tls(assoc: Association) -> bool:
    """Whether the association runs over TLS."""
    sock = getattr(assoc.dul.socket, "socket", None)
    return isinstance(sock, ssl.SSLSocket)


def admit(assoc: Association) -> bool:
    """Take an association slot for ``assoc`` (from EVT_REQUESTED); False when none is free."""
    if not isinstance(assoc, NodeAssociation):
        return True  # not ours: pynetdicom's own count applies
    return assoc.table.admit(assoc.connection)


def stream_received_datasets(spool: Spool | Path | None = None) -> None:
    """C-STORE data sets go to a file as they arrive, not to memory (process-wide).

    pynetdicom writes them to a :class:`SpoolFile`: with a :class:`~storage.spool.Spool`
    that seals (the node's ``data_dir/spool``), one of its files whose name is already
    durable, so :mod:`storage.ingest` needs one fsync; otherwise a temporary file in the
    folder given (owner-only: the data are PHI), or in the system's temporary directory.
    pynetdicom removes the file after the C-STORE handler unless ingest kept it
    (:func:`keep_spool_file`).  What a crash leaves is sorted out when the node starts
    (:func:`storage.spool.recover`).
    """
    if isinstance(spool, Path):
        make_dirs_durably(spool)
        SpoolFile.directory, SpoolFile.spool = str(spool), None
    elif spool is not None:
        SpoolFile.directory = str(spool.directory)
        SpoolFile.spool = spool if spool.sealing else None
    _config.STORE_RECV_CHUNKED_DATASET = True
    dimse_messages.NamedTemporaryFile = SpoolFile  # type: ignore[assignment,misc]


class SpoolFile:
    """pynetdicom's temporary file for a received data set, keeping its first write error.

    pynetdicom writes fragments from its reader thread, where an ``OSError`` (disk full,
    file size limit) would abort the association without a status; kept here instead,
    the C-STORE handler answers 0xA700 with the reason (:class:`DatasetNotKept`).
    With a sealing spool it also counts the length and CRC-32 of what was written
    (:meth:`sealable`).
    """

    #: where spool files go (``data_dir/spool``, set by :func:`stream_received_datasets`)
    directory: str | None = None
    #: the spool whose files have durable names, when it seals
    spool: Spool | None = None

    def __init__(self, **kwargs: Any) -> None:
        if SpoolFile.directory is not None:
            kwargs["dir"] = SpoolFile.directory
        self.error: OSError | None = None
        self._file: Any = None
        self.length = 0
        self.crc32 = 0
        self.name = os.path.join(tempfile.gettempdir(), "ai-node-unwritable.dcm")
        self._durable_name: Path | None = None
        try:
            if SpoolFile.spool is not None:
                self._durable_name = SpoolFile.spool.take()
                self._file = self._durable_name.open("wb")
                self.name = str(self._durable_name)
            else:
                self._file = tempfile.NamedTemporaryFile(**kwargs)  # noqa: SIM115 - closed by pynetdicom
                self.name = self._file.name
        except OSError as exc:
            self.error = exc

    @property
    def file(self) -> SpoolFile:
        return self  # pynetdicom calls ``.file.flush()``

    def sealable(self) -> SpooledData | None:
        """The data set as a spool file with a durable name, or None (a plain temporary file)."""
        if self._durable_name is None or self.error is not None:
            return None
        return SpooledData(self._durable_name, self.length, self.crc32)

    def keep(self) -> None:
        """Ingest stored it: the NameSyncer removes the file, pynetdicom must not."""
        self.name = f"{self.name}.kept"  # pynetdicom's unlink after the handler finds nothing

    def write(self, data: bytes) -> int:
        if self.error is None:
            try:
                self._file.write(data)
                self.length += len(data)
                self.crc32 = zlib.crc32(data, self.crc32)
            except OSError as exc:
                self.error = exc
        return len(data)

    def flush(self) -> None:
        if self.error is None:
            try:
                self._file.flush()
            except OSError as exc:
                self.error = exc

    def close(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()


class DatasetRefused(Exception):
    """A received data set is refused before it is parsed (0xC210): the reason."""


class DatasetNotKept(Exception):
    """A received data set could not be written to its temporary file (0xA700): the reason."""


def keep_spool_file(event: Event) -> None:
    """After ingest kept the spool file (``IngestOutcome.spool_kept``): leave it in place."""
    spool = getattr(event.request, "_dataset_file", None)
    if isinstance(spool, SpoolFile):
        spool.keep()


def received_dataset(event: Event) -> bytes | Path | SpooledData:
    """The C-STORE data set: the spool file it was streamed to (sealable when its name is
    durable), else the encoded bytes (with meta).

    Raises :class:`DatasetRefused` when a deflated data set inflates beyond the instance
    limit, :class:`DatasetNotKept` when it could not be written to its temporary file,
    and AttributeError when the request has no data set.
    """
    spool = getattr(event.request, "_dataset_file", None)
    if isinstance(spool, SpoolFile) and spool.error is not None:
        raise DatasetNotKept(f"cannot store the received data set: {spool.error}")
    path = getattr(event.request, "_dataset_path", None)
    data: bytes | Path = path if isinstance(path, Path) else event.encoded_dataset()
    sealable = spool.sealable() if isinstance(spool, SpoolFile) else None
    if event.context.transfer_syntax != DeflatedExplicitVRLittleEndian:
        return sealable or data
    assoc = event.assoc
    limit = assoc.table.limits.max_instance_bytes if isinstance(assoc, NodeAssociation) else 0
    if limit and inflated_size_exceeds(data, limit):
        raise DatasetRefused(
            f"deflated data set inflates to more than {limit // MIB} MiB (receive.max_instance_mb)"
        )
    return sealable or data


def _drop(connection: Connection) -> None:
    """Shut a late connection down; wake its association thread, which waits for the RQ."""
    if connection.sock is not None:
        try:
            socket.socket.shutdown(connection.sock, socket.SHUT_RDWR)
        except OSError:
            pass
    assoc = connection.assoc
    if assoc is not None:
        # the acceptor waits in dul.receive_pdu(timeout=acse_timeout); None reads as a timeout
        assoc.dul.to_user_queue.put(None)


def _close(sock: socket.socket | None) -> None:
    if sock is None:
        return
    try:
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError):
        return f"TLS handshake failed: {exc.reason or exc}"
    if isinstance(exc, TimeoutError | socket.timeout):
        return "TLS handshake not completed within network.negotiation_timeout"
    return str(exc) or type(exc).__name__


def listen(
    ae: AE, config: NodeConfig, handlers: list[Any], spool: Spool | Path | None = None
) -> tuple[NodeAssociationServer, NodeAssociationServer | None]:
    """Start the SCP's listeners: ``port`` (TLS-only when ``tls.enabled`` without ``tls.port``)
    and, with ``tls.port``, a second, TLS listener.  Received data sets are spooled to
    ``spool`` (by default temporary files in ``data_dir/spool``).  Raises ConfigError (TLS
    files) or OSError."""
    stream_received_datasets(spool if spool is not None else config.data_dir / "spool")
    connections = ConnectionTable(Limits.from_config(config))
    timeout = config.network.network_timeout
    context = tls.server_context(config.tls) if config.tls.enabled else None
    tls_port = config.tls.port if context is not None else None
    main_context = context if tls_port is None else None
    server = start_server(
        ae, (config.bind, config.port), handlers, connections, timeout, main_context
    )
    if tls_port is None:
        return server, None
    try:
        secure = start_server(ae, (config.bind, tls_port), handlers, connections, timeout, context)
    except OSError:
        server.shutdown()
        raise
    return server, secure


def start_server(
    ae: AE,
    address: tuple[str, int],
    handlers: list[Any],
    connections: ConnectionTable,
    network_timeout: float,
    ssl_context: ssl.SSLContext | None = None,
) -> NodeAssociationServer:
    """Listen on ``address`` in a background thread (as ``AE.start_server(block=False)``)."""
    server = ae.make_server(
        address,
        ssl_context=ssl_context,
        evt_handlers=handlers,
        server_class=NodeAssociationServer,
        connections=connections,
        network_timeout=network_timeout,
    )
    thread = threading.Thread(
        target=make_target(server.serve_forever),
        name=f"AcceptorServer@{address[1]}",
        daemon=True,
    )
    thread.start()
    ae._servers.append(server)
    return cast(NodeAssociationServer, server)
