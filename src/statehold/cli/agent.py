"""``statehold agent serve|certs|ping|status|sync|replicas|promote|demote|release|export-pool``:
the node agent.

Only wiring. ``serve`` runs this node's agent (gRPC over TCP, mutual TLS only) until
SIGTERM/SIGINT; ``certs`` writes a cluster CA (created on first use) and a node
certificate to directories, for standalone hosts and tests; the other commands are clients
of an agent, authenticated with this node's certificates (``--certs``), printing the
agent's answer as JSON.

In a cluster the operator keeps the CA in a Secret and writes one Secret per node
(``statehold.controller.agent_certs``); ``serve --certs-secret-namespace NS`` reads this
node's (``statehold-agent-<node>``) through the API, waiting for it to appear and become
readable (the agents may get those Secrets by name only, as the operator's Role lists
them), and exits (status 0, for the kubelet to restart it) when the operator issued a new
one.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

import typer

from statehold.cli.context import home_dir
from statehold.cli.output import HomeOption, exit_code, failures, size_arg
from statehold.errors import InvalidArgument, Unavailable

if TYPE_CHECKING:
    from statehold.agent.client import AgentClient

CertsOption = typer.Option(..., "--certs", help="Directory holding ca.crt, tls.crt and tls.key.")
SECRET_POLL = 5.0
"""Seconds between two reads of a node's certificate Secret that does not exist yet."""
AddressOption = typer.Option(..., "--address", "-a", help="The agent's IP:PORT.")


def _client(address: str, certs: Path) -> AgentClient:
    from statehold.agent.client import AgentClient
    from statehold.agent.pki import load_bundle

    return AgentClient(address, load_bundle(certs))


def _print(message: Any) -> None:
    from google.protobuf.json_format import MessageToDict

    typer.echo(json.dumps(MessageToDict(message, preserving_proto_field_name=True,
                                        always_print_fields_with_no_presence=True), indent=2))


def read_secret_certs(kube: Any, namespace: str, node: str) -> Any:
    """This node's certificates (a ``pki.Bundle``) from its Secret, read once: NotFound
    before the operator issued it, PermissionDenied before the operator's Role lets this
    node's agents read it (they may get the node certificate Secrets by name only)."""
    from statehold.agent import pki
    from statehold.controller.agent_certs import node_secret_name, read_node_certs
    from statehold.kube.kinds import SECRET

    got = read_node_certs(kube.get(SECRET, node_secret_name(node), namespace))
    return pki.Bundle(got.ca, pki.KeyPair(got.cert, got.key))


def _secret_certs(kube: Any, namespace: str, node: str, stop: threading.Event) -> Any:
    """This node's certificates from its Secret, waiting until the operator made it and
    granted this node's agents access to it (None if ``stop`` was set first)."""
    from statehold.controller.agent_certs import node_secret_name
    from statehold.errors import NotFound, PermissionDenied

    said = False
    while not stop.is_set():
        try:
            return read_secret_certs(kube, namespace, node)
        except (NotFound, PermissionDenied) as exc:
            if not said:
                why = "not there" if isinstance(exc, NotFound) else "not readable by this agent"
                print(f"waiting for Secret {namespace}/{node_secret_name(node)} ({why} yet: "
                      "the operator issues it and grants the agents access)",
                      file=sys.stderr, flush=True)
                said = True
        stop.wait(SECRET_POLL)
    return None


def serve(
    ctx: typer.Context,
    listen: str = typer.Option(..., "--listen", help="IP:PORT to serve on (TLS only)."),
    certs: Path | None = typer.Option(None, "--certs",
                                      help="Directory holding ca.crt, tls.crt and tls.key."),
    certs_secret_namespace: str | None = typer.Option(
        None, "--certs-secret-namespace",
        help="Read this node's certificates from Secret statehold-agent-<node> in this namespace "
        "(the operator issues it); instead of --certs."),
    kubeconfig: str | None = typer.Option(None, "--kubeconfig",
                                          help="With --certs-secret-namespace; default: in-cluster."),
    certs_check: float = typer.Option(300.0, "--certs-check-interval", min=1.0,
                                      help="Seconds between two reads of the certificate Secret; "
                                      "a changed one ends the process (the kubelet restarts it)."),
    node_name: str = typer.Option(..., "--node-name", help="This node's name (as in its certificate)."),
    home: Path | None = HomeOption,
    interval: float = typer.Option(5.0, "--interval", help="Seconds between replication cycles; 0: "
                                   "only on `agent sync`."),
    replica: list[str] = typer.Option(
        [], "--replica", help="VOLUME=NODE[:POOL]@IP:PORT[,...]: the replicas of a primary volume "
        "(pool/volume) of this node; repeatable; replaces what the agent recorded for it."),
    metrics_listen: str = typer.Option("", "--metrics-address", "--metrics-listen",
                                       help="IP:PORT for Prometheus metrics (docs/metrics.md); empty: off."),
    checkpoint: str = typer.Option("0", "--checkpoint", hidden=True,
                                   help="Seed bytes between durable progress records (tests)."),
    pause_dir: Path | None = typer.Option(None, "--pause-dir", hidden=True,
                                          envvar="STATEHOLD_AGENT_PAUSE_DIR",
                                          help="Tests only: directory of pause points."),
    grace: float = typer.Option(5.0, help="Seconds in-flight calls get on shutdown."),
    cluster: bool | None = typer.Option(
        None, "--cluster/--standalone",
        help="Compare this node's primaries with the cluster's ReplicatedVolume records at start, "
        "before serving, and then every --record-check-interval: only a primary the record "
        "confirms is replicated, one it does not name is fenced (stale), and a fenced copy "
        "still in use here is made read-only (docs/design/replication.md §8.4). Default: on "
        "with --certs-secret-namespace; uses --kubeconfig, else in-cluster credentials."),
    record_interval: float = typer.Option(30.0, "--record-check-interval", min=0.1,
                                          help="Seconds between two comparisons with the records."),
    local_socket: Path | None = typer.Option(
        None, "--local-socket",
        help="Also serve this node's CSI plugin on this Unix socket (0600, root only): the "
        "coordination of group snapshots across nodes, nothing else (docs/security.md)."),
) -> None:
    """Serve this node's agent: the agent API for the controller and the other agents, and
    the replication of this node's primary volumes to their replicas."""
    from statehold.agent import pki
    from statehold.agent.book import Peer
    from statehold.agent.copies import VolumeRef
    from statehold.agent.engine_copies import EngineCopies
    from statehold.agent.qos_metrics import QosCollector
    from statehold.agent.server import AgentConfig, AgentServer
    from statehold.engine.node import Node
    from statehold.engine.qos import Overrides
    from statehold.engine.throttle import Throttle

    stop = threading.Event()
    kube: Any = None

    def _early(signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _early)
    signal.signal(signal.SIGINT, _early)
    with failures():
        if (certs is None) == (certs_secret_namespace is None):
            raise InvalidArgument("give exactly one of --certs and --certs-secret-namespace")
        if certs is not None:
            bundle = pki.load_bundle(certs)
        else:
            from statehold.kube.client import ApiKube

            assert certs_secret_namespace is not None
            kube = ApiKube.connect(kubeconfig)
            found = _secret_certs(kube, certs_secret_namespace, node_name, stop)
            if found is None:
                return
            bundle = found
        config = AgentConfig(
            node=node_name, listen=listen, bundle=bundle,
            home=home_dir(ctx, home, create=True), interval=interval,
            checkpoint=size_arg(checkpoint) if checkpoint != "0" else 0,
            metrics_listen=metrics_listen, pause_dir=pause_dir, record_interval=record_interval,
            local_socket=local_socket.absolute() if local_socket is not None else None)
        records = None
        if cluster if cluster is not None else certs_secret_namespace is not None:
            from statehold.agent.fencing import kube_records
            from statehold.kube.client import ApiKube

            records = kube_records(kube if kube is not None else ApiKube.connect(kubeconfig))
        replicas: dict[VolumeRef, tuple[Peer, ...]] = {}
        for spec in replica:
            name, sep, listed = spec.partition("=")
            if not sep:
                raise InvalidArgument(f"--replica {spec!r} must be VOLUME=NODE@IP:PORT[,...]")
            replicas[VolumeRef.parse(name)] = tuple(Peer.parse(p) for p in listed.split(",") if p)
        node = Node(config.home)
        server = AgentServer(config, EngineCopies(node, checkpoint=config.checkpoint or None),
                             records=records)
        server.replicator.metrics.registry.register(  # the volumes' I/O limits (docs/qos.md)
            QosCollector(node.pools, Throttle.for_home(node.home), Overrides(node.home)))
        for volume, peers in replicas.items():
            server.book.set(volume, peers)
        server.start()

    def _shutdown(signum: int, _frame: FrameType | None) -> None:
        # stop() must not run in the signal handler's frame while the main thread waits
        threading.Thread(target=server.stop, args=(grace,), name="agent-shutdown", daemon=True).start()

    signal.signal(signal.SIGTERM, _shutdown)
    signal.signal(signal.SIGINT, _shutdown)
    if stop.is_set():  # a signal arrived while starting
        _shutdown(signal.SIGTERM, None)
    print(f"serving {listen} port={server.port}", file=sys.stderr, flush=True)
    if kube is not None:
        assert certs_secret_namespace is not None
        threading.Thread(target=_watch_certs, args=(kube, certs_secret_namespace, node_name,
                                                    config.bundle, certs_check, server, grace),
                         name="certs-watch", daemon=True).start()
    while not server.wait(1.0):
        pass
    node.close()


def _watch_certs(kube: Any, namespace: str, node: str, current: Any, interval: float,
                 server: Any, grace: float) -> None:
    """Stop the agent when its Secret holds other certificates than it serves with: the
    process exits 0 and the kubelet starts it again with the new ones."""
    from statehold.errors import StateholdError

    idle = threading.Event()
    while not server.wait(0) and not idle.wait(interval):
        try:
            fresh = read_secret_certs(kube, namespace, node)
        except StateholdError as exc:  # API away, Secret gone or not granted: keep serving
            print(f"cannot read the certificate Secret: {exc}", file=sys.stderr, flush=True)
            continue
        if fresh != current:
            print("the operator issued new certificates; restarting", file=sys.stderr, flush=True)
            server.stop(grace)
            return


def certs(
    out: Path = typer.Option(..., "--out", help="Directory for ca.crt, tls.crt, tls.key."),
    ca_dir: Path = typer.Option(..., "--ca-dir", help="The cluster CA's directory (ca.crt, ca.key); "
                                "a new CA is created there if it holds none."),
    node: str = typer.Option(..., "--node", help="Node name (certificate CN and DNS SAN)."),
    ip: list[str] = typer.Option([], "--ip", help="IP address SAN (repeatable)."),
    role: str = typer.Option("node", "--role", help="node | controller"),
    days: int = typer.Option(365, "--days", help="Validity of the node certificate."),
) -> None:
    """Write a node certificate signed by the cluster CA (standalone hosts and tests)."""
    from statehold.agent import pki

    with failures():
        if role not in pki.ROLES:
            raise InvalidArgument(f"--role must be one of {', '.join(pki.ROLES)}")
        if (ca_dir / pki.CA_CERT).exists():
            ca = pki.load_ca(ca_dir)
        else:
            ca = pki.create_ca()
            pki.write_ca_files(ca_dir, ca)
            typer.echo(f"created cluster CA in {ca_dir}", err=True)
        pair = pki.issue(ca, node, ips=tuple(ip), role=next(r for r in pki.ROLES if r == role),
                         days=days)
        for path in pki.write_node_files(out, ca.cert, pair):
            typer.echo(str(path))


def ping(address: str = AddressOption, certs: Path = CertsOption) -> None:
    """Ask an agent who it is (and who it sees calling)."""
    with failures(), _client(address, certs) as c:
        _print(c.ping())


def status(volume: str = typer.Argument(..., help="pool/volume"), address: str = AddressOption,
           certs: Path = CertsOption) -> None:
    """The state of an agent's copy of a volume, and of its replicas if it is the primary."""
    from statehold.agent.copies import VolumeRef

    with failures(), _client(address, certs) as c:
        _print(c.copy_status(VolumeRef.parse(volume)))


def sync(volume: str = typer.Argument(..., help="pool/volume"), address: str = AddressOption,
         certs: Path = CertsOption) -> None:
    """Replicate a primary volume to each of its replicas now; exit as Unavailable (7) if one
    failed (the replies are printed either way)."""
    from statehold.agent.copies import VolumeRef
    from statehold.agent.gen import agent_pb2 as pb

    with failures(), _client(address, certs) as c:
        replicas = c.sync(VolumeRef.parse(volume))
    _print(pb.SyncReply(replicas=replicas))
    failed = [r for r in replicas if r.last_error]
    if failed:
        raise typer.Exit(exit_code(Unavailable(f"{len(failed)} replica(s) did not take the point")))


def replicas(volume: str = typer.Argument(..., help="pool/volume"),
             peer: list[str] = typer.Argument(None, help="NODE[:POOL]@IP:PORT; none: no replicas"),
             rpo: str = typer.Option("", "--rpo", help="the volume's RPO (15s, 1m30s, 2h), exported "
                                     "as statehold_replication_rpo_seconds; empty: none"),
             address: str = AddressOption, certs: Path = CertsOption) -> None:
    """Set the replicas a primary volume of the agent's node streams to."""
    from statehold.agent.book import Peer
    from statehold.agent.copies import VolumeRef
    from statehold.csi.backend_local import parse_rpo

    with failures():  # bad arguments are refused before anything is reached
        ref, peers = VolumeRef.parse(volume), [Peer.parse(p) for p in peer or []]
        seconds = parse_rpo(rpo) if rpo else 0
    with failures(), _client(address, certs) as c:
        c.set_replicas(ref, peers, rpo_seconds=seconds)


def promote(volume: str = typer.Argument(..., help="pool/volume"),
            epoch: int = typer.Option(..., "--epoch", help="The new epoch (recorded in the cluster first)."),
            address: str = AddressOption, certs: Path = CertsOption) -> None:
    """Make an agent's copy of a volume the writable primary at a new epoch."""
    from statehold.agent.copies import VolumeRef

    with failures(), _client(address, certs) as c:
        _print(c.promote(VolumeRef.parse(volume), epoch))


def demote(volume: str = typer.Argument(..., help="pool/volume"),
           epoch: int = typer.Option(..., "--epoch", help="The newer epoch the copy must respect."),
           address: str = AddressOption, certs: Path = CertsOption) -> None:
    """Tell an agent's copy of a volume about a newer epoch (an old primary becomes stale)."""
    from statehold.agent.copies import VolumeRef

    with failures(), _client(address, certs) as c:
        _print(c.demote(VolumeRef.parse(volume), epoch))


def release(volume: str = typer.Argument(..., help="pool/volume"), address: str = AddressOption,
            certs: Path = CertsOption) -> None:
    """Delete an agent's copy of a volume (its point snapshots, state and engine volume);
    refused while it is in use or the primary."""
    from statehold.agent.copies import VolumeRef

    with failures(), _client(address, certs) as c:
        c.release(VolumeRef.parse(volume))


def export_pool(pool: str = typer.Argument(..., help="Pool name."), address: str = AddressOption,
                certs: Path = CertsOption) -> None:
    """Export a retired pool of the agent's node (a controller certificate's call): refused
    while anything is left in it; the node's other Statehold processes let go of it, then it
    is unmounted and its disks detached (they keep their data). Prints whether this call
    exported it (false: the node did not have it, an earlier export)."""
    with failures(), _client(address, certs) as c:
        exported = c.export_pool(pool)
    typer.echo(json.dumps({"pool": pool, "exported": exported}, indent=2))


def register(app: typer.Typer) -> None:
    """Add ``statehold agent ...`` to app."""
    sub = typer.Typer(help="The node agent: serve it, its certificates, ask it.", no_args_is_help=True)
    sub.command("serve")(serve)
    sub.command("certs")(certs)
    sub.command("ping")(ping)
    sub.command("status")(status)
    sub.command("sync")(sync)
    sub.command("replicas")(replicas)
    sub.command("promote")(promote)
    sub.command("demote")(demote)
    sub.command("release")(release)
    sub.command("export-pool")(export_pool)
    app.add_typer(sub, name="agent")
