"""``etcd://`` (v3): URL parsing, versions, 503 and recovery, failover, auth, TLS, limits.

The contract suite (tests/test_backend_contract.py) covers the compare-and-set semantics on
both layouts; this file covers what is particular to etcd v3. Every store here is a real
etcd process, reached through etcd's JSON gateway; ``tests/etcd3raw.py`` is an independent
bare client for looking at keys and moving them behind lockd's back.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bench.procs import Lockd, Proc, find_binary, free_port, wait_for_port
from bench.servers import EtcdServer
from lockd.backends import InvalidBackendURL, open_backend
from lockd.backends.base import PING_KEY, BackendUnavailable, ValueTooLarge
from lockd.backends.etcd3 import Etcd3Backend, prefix_end
from lockd.config import load
from lockd.errors import Kind, LockdError
from lockd.groups import GroupSettings
from lockd.layouts.airlock import AirlockLayout
from lockd.layouts.native import NativeLayout
from lockd.semaphore import Holder, Outcome, Semaphore
from lockd.service import LockService
from lockd.store import Store, open_store
from tests.etcd3raw import RawEtcd, compare
from tests.probes import count_reads

LAYOUT = NativeLayout()


def backend_of(url: str) -> Etcd3Backend:
    backend = open_backend(url)
    assert isinstance(backend, Etcd3Backend)
    return backend


def store_of(url: str) -> tuple[Etcd3Backend, Store]:
    """A URL that may name a layout: the store, and its backend."""
    store = open_store(url)
    assert isinstance(store.backend, Etcd3Backend)
    return store.backend, store


def service_on(backend: Etcd3Backend, groups: GroupSettings, timeout: float = 10.0) -> LockService:
    return LockService(Store(backend, LAYOUT), groups, timeout=timeout)


def raw_key(backend: Etcd3Backend, key: str) -> bytes:
    """The key as etcd itself names it: the backend puts its namespace in front."""
    return (backend.namespace + key).encode()


# URL parsing


def test_url_endpoints_credentials_and_options() -> None:
    b, store = store_of(
        "etcd://alice:s%40cret@h1:2381,[::1]:2382,h3/?layout=airlock&timeout=0.5"
    )
    assert b.endpoints == [("h1", 2381), ("::1", 2382), ("h3", 2379)]
    assert b.members.members == ["h1:2381", "[::1]:2382", "h3:2379"]
    assert (b.username, b.password) == ("alice", "s@cret")
    assert isinstance(store.layout, AirlockLayout) and b.timeout == 0.5
    assert b.tls is None
    assert "s@cret" not in b.describe() and "s%40cret" not in b.describe()


def test_url_defaults_to_native_layout_and_namespace() -> None:
    b, store = store_of("etcd://127.0.0.1:2379?namespace=team-a/")
    assert isinstance(store.layout, NativeLayout)
    # The backend, not the layout, puts the namespace in front of every key it sends.
    assert b.namespace == "team-a/"
    assert b._key(store.layout.key("workers")) == b"team-a/lockd/v1/groups/workers"
    assert b._key(PING_KEY).startswith(b"team-a/")
    # The layout is the store's option: the backend alone refuses it.
    with pytest.raises(InvalidBackendURL, match="unknown options: layout"):
        open_backend("etcd://127.0.0.1:2379?layout=native")


def test_no_driver_beyond_aiohttp() -> None:
    """etcd v3 is HTTP/JSON to etcd's gateway: importing the backend loads no gRPC."""
    code = (
        "import sys, lockd.backends.etcd3;"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'grpc', 'aetcd', 'google'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]"


def test_prefix_end() -> None:
    assert prefix_end(b"a/") == b"a0"
    assert prefix_end(b"a\xff") == b"b"
    assert prefix_end(b"\xff\xff") == b"\0"


def test_url_tls_options(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    b = backend_of(f"etcd://h:2379?tls_ca={ca}")
    assert b.tls is not None and b.tls.ca == str(ca) and b.tls.cert is None
    assert backend_of("etcd://h:2379?tls=true").tls is not None


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("etcd://", "names no host"),
        ("etcd://h:port", "bad port"),
        ("etcd://h:2379?layout=zookeeper", "layout="),
        ("etcd://h:2379?timeout=0", "timeout="),
        ("etcd://h:2379?frobnicate=1", "unknown options: frobnicate"),
        ("etcd://h:2379?tls_ca=/nonexistent/ca.pem", "tls_ca="),
        ("etcd://h:2379/some/path", "no path"),
        ("etcd://alice@h:2379", "user:password@"),
    ],
)
def test_bad_urls_say_why(url: str, message: str) -> None:
    with pytest.raises(InvalidBackendURL, match=message):
        open_store(url)


# Versions


async def test_compare_is_on_mod_revision_not_version(etcd_native_url: str) -> None:
    """A key deleted and recreated restarts its version at 1; its mod_revision is new."""
    backend = backend_of(etcd_native_url)
    await backend.open()
    async with RawEtcd(backend.members.members[0]) as raw:
        try:
            key = LAYOUT.key("recreated")
            assert (await backend.compare_and_set(key, b"first", None)).stored
            _, seen = await backend.get(key)
            await raw.delete(raw_key(backend, key))
            await raw.put(raw_key(backend, key), b"first")  # version 1 again, same value
            kv = await raw.get(raw_key(backend, key))
            assert kv is not None and kv.version == 1 and kv.value == b"first"
            # A compare on version would wrongly accept the stale view; mod_revision refuses.
            assert (await backend.compare_and_set(key, b"lost update", seen)).stored is False
            assert (await backend.get(key))[0] == b"first"
        finally:
            await backend.close()


async def test_compare_and_set_answers_revisions_and_lost_races_in_one_transaction(
    etcd_native_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Success answers the header revision (the key's new mod_revision) with the value; a
    lost compare answers the current value and mod_revision from the same transaction, with
    no get. A version is ``(mod_revision, value)``."""
    backend = backend_of(etcd_native_url)
    await backend.open()
    raw = RawEtcd(backend.members.members[0])
    read = backend.get
    reads = count_reads(backend, monkeypatch)
    try:
        key = LAYOUT.key("swap-native")
        etcd_key = raw_key(backend, key)
        ok, value, v1 = await backend.compare_and_set(key, b"one", None)
        assert ok and value == b"one" and v1[1] == b"one" and isinstance(v1[0], int)
        ok, value, v2 = await backend.compare_and_set(key, b"two", v1)
        assert ok and value == b"two" and v2[1] == b"two" and v2[0] > v1[0]
        kv = await raw.get(etcd_key)
        assert kv is not None and (kv.mod_revision, kv.value) == v2
        assert await read(key) == (b"two", v2)
        await raw.put(etcd_key, b"foreign")  # another writer moves the key on
        foreign = await raw.get(etcd_key)
        assert foreign is not None
        now = (foreign.mod_revision, b"foreign")
        assert await backend.compare_and_set(key, b"three", v2) == (False, b"foreign", now)
        assert await backend.compare_and_set(key, b"three", None) == (False, b"foreign", now)
        await raw.delete(etcd_key)
        assert await backend.compare_and_set(key, b"four", now) == (False, None, None)
        assert reads == []
    finally:
        await raw.close()
        await backend.close()


async def test_a_remembered_revision_with_another_value_never_matches(
    etcd_native_url: str,
) -> None:
    """The transaction compares the value too: a version naming the key's current
    mod_revision but another value (what a restored etcd can present) is refused, where a
    compare on mod_revision alone would have written."""
    backend = backend_of(etcd_native_url)
    await backend.open()
    raw = RawEtcd(backend.members.members[0])
    try:
        key = LAYOUT.key("same-revision")
        etcd_key = raw_key(backend, key)
        assert (await backend.compare_and_set(key, b"seen", None)).stored
        value, (revision, seen) = await backend.get(key)
        assert value == seen == b"seen"
        result = await backend.compare_and_set(key, b"lost update", (revision, b"not seen"))
        assert result == (False, b"seen", (revision, b"seen"))
        # The same compare on mod_revision alone matches: the value compare is what refuses.
        doc = await raw.txn([compare(etcd_key, "MOD", revision)], success=[])
        assert doc.get("succeeded") is True
        doc = await raw.txn(
            [compare(etcd_key, "MOD", revision), compare(etcd_key, "VALUE", b"not seen")],
            success=[],
        )
        assert not doc.get("succeeded")
        assert (await backend.get(key))[0] == b"seen"
    finally:
        await raw.close()
        await backend.close()


async def test_an_etcd_restored_from_a_backup_cannot_take_a_stale_version(
    tmp_path: Path,
) -> None:
    """Restoring etcd's data from a backup rewinds its revisions; the next write after the
    restore gets a revision that this process saw with another value. Comparing the value
    too keeps that revision from matching."""
    server = EtcdServer(tmp_path / "etcd").start()
    data = server.workdir / f"{server.name}.etcd"
    backup = tmp_path / "backup.etcd"
    backend = backend_of(f"etcd://{server.endpoint}?timeout=1")
    try:
        key = LAYOUT.key("restored")
        created = await backend.compare_and_set(key, b"A", None)
        assert created.stored
        server.stop()
        shutil.copytree(data, backup)  # a backup of the data directory, etcd stopped
        server.start()
        written = await _until_up(lambda: backend.compare_and_set(key, b"B", created.version))
        assert written.stored
        remembered = written.version  # what lockd now remembers: (revision r, b"B")

        server.stop()
        shutil.rmtree(data)
        shutil.copytree(backup, data)  # the restore: the key is A again, revision r - 1
        server.start()
        async with RawEtcd(server.endpoint) as raw:
            # Another writer's write after the restore gets revision r again.
            assert await _until_up(lambda: raw.put(key.encode(), b"C"), Exception) == remembered[0]
            kv = await raw.get(key.encode())
            assert kv is not None and (kv.mod_revision, kv.value) == (remembered[0], b"C")
        result = await backend.compare_and_set(key, b"D", remembered)
        assert result == (False, b"C", (remembered[0], b"C"))
        assert (await backend.get(key))[0] == b"C"
    finally:
        await backend.close()
        server.stop()


async def _until_up(call, errors=(BackendUnavailable,), timeout: float = 20.0):  # type: ignore[no-untyped-def]
    """``call()`` once etcd answers again (after a start or a restart)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await call()
        except errors:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


# Limits


async def test_a_group_too_large_for_etcd_is_value_too_large(tmp_path: Path) -> None:
    """etcd refuses a request above --max-request-bytes; lockd says so, not "unavailable",
    asks no other member, and the key keeps its value."""
    server = EtcdServer(tmp_path / "etcd", extra_args=("--max-request-bytes", "4096")).start()
    spare = EtcdServer(tmp_path / "spare").start()  # a second "member" it must not ask
    backend = backend_of(f"etcd://{server.endpoint},{spare.endpoint}")
    try:
        key = LAYOUT.key("crowded")
        holders = tuple(Holder(f"{i:032x}", 1_700_000_000.0 + i, i) for i in range(80))
        crowded = LAYOUT.encode(Semaphore(slots=100, holders=holders, next_grant_id=81), None)
        assert 4096 < len(crowded) < 65536
        with pytest.raises(ValueTooLarge, match="too large"):
            await backend.compare_and_set(key, crowded, None)
        small = await backend.compare_and_set(key, b"{}", None)
        assert small.stored
        with pytest.raises(ValueTooLarge, match="too large"):
            await backend.compare_and_set(key, crowded, small.version)
        # Far above the limit, gRPC's own message limit answers ("larger than max").
        with pytest.raises(ValueTooLarge, match="larger than max"):
            await backend.compare_and_set(key, b"x" * 600_000, small.version)
        assert await backend.get(key) == (b"{}", small.version)
        assert backend.members.current == 0
        async with RawEtcd(spare.endpoint) as other:
            assert await other.get(b"lockd/v1/groups/crowded") is None
    finally:
        await backend.close()
        spare.stop()
        server.stop()


# Unavailability, recovery and failover


async def test_unreachable_etcd_is_503_then_recovers_without_reopening(tmp_path: Path) -> None:
    port = free_port()
    backend = backend_of(f"etcd://127.0.0.1:{port}?timeout=1")
    await backend.open()
    service = service_on(backend, GroupSettings(default_slots=1), timeout=3)
    server = EtcdServer(tmp_path, client_port=port)
    try:
        with pytest.raises(BackendUnavailable):
            await backend.get("k")
        with pytest.raises(LockdError) as err:
            await service.pre_reboot("default", "a")
        assert err.value.kind is Kind.backend_unavailable and err.value.kind.status == 503
        with pytest.raises(LockdError):
            await service.ready()

        server.start()
        # The same backend object, never reopened, reaches the store once it is up.
        outcome = await _eventually(lambda: service.pre_reboot("default", "a"))
        assert outcome is Outcome.GRANTED
        await service.ready()

        # A member that hangs (accepts, never answers) is a timeout, also a 503.
        assert server.proc is not None
        freeze(server.proc)
        with pytest.raises(LockdError) as err:
            await service.pre_reboot("default", "b")
        assert err.value.kind is Kind.backend_unavailable
        server.proc.signal(signal.SIGCONT)
        assert await _eventually(lambda: service.pre_reboot("default", "b")) is Outcome.FULL

        server.stop()
        with pytest.raises(LockdError) as err:
            await service.pre_reboot("default", "b")
        assert err.value.kind is Kind.backend_unavailable
        server.start()
        assert await _eventually(lambda: service.pre_reboot("default", "a")) is (
            Outcome.ALREADY_HELD
        )
    finally:
        await backend.close()
        server.stop()


def freeze(proc: Proc) -> None:
    """SIGSTOP, and wait until every thread has stopped: a loopback round trip through the
    gateway is faster than the kernel stopping all of etcd's threads."""
    proc.signal(signal.SIGSTOP)
    tasks = Path(f"/proc/{proc.pid}/task")
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        states = []
        for task in tasks.iterdir():
            try:
                states.append((task / "stat").read_text().rpartition(")")[2].split()[0])
            except OSError:  # the thread ended
                continue
        if all(state in ("T", "t") for state in states):
            return
        time.sleep(0.001)
    raise AssertionError(f"etcd (pid {proc.pid}) did not stop")


async def _eventually(call, timeout: float = 20.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await call()
        except LockdError as exc:
            if exc.kind is not Kind.backend_unavailable or time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


async def test_fails_over_to_the_next_endpoint(etcd_server: EtcdServer, unique: str) -> None:
    dead = f"127.0.0.1:{free_port()}"
    backend = backend_of(f"etcd://{dead},{etcd_server.endpoint}?namespace={unique}/&timeout=1")
    await backend.open()
    try:
        service = service_on(backend, GroupSettings(default_slots=1))
        assert await service.pre_reboot("g", "a") is Outcome.GRANTED
        assert await service.pre_reboot("g", "b") is Outcome.FULL
        # It stays on the member that answered.
        assert backend.endpoints[backend.members.current] == (
            "127.0.0.1", etcd_server.client_port)
    finally:
        await backend.close()


# Authentication


@pytest.fixture(scope="module")
def auth_etcd(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    server = EtcdServer(tmp_path_factory.mktemp("etcd-auth")).start()
    try:
        asyncio.run(_enable_auth(server.endpoint))
        yield server
    finally:
        server.stop()


async def _enable_auth(endpoint: str) -> None:
    async with RawEtcd(endpoint) as raw:
        await raw.enable_auth("root", "rootpw")


async def test_user_password_auth(
    auth_etcd: EtcdServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    good = backend_of(f"etcd://root:rootpw@{auth_etcd.endpoint}")
    anonymous = backend_of(f"etcd://{auth_etcd.endpoint}?timeout=1")
    wrong = backend_of(f"etcd://root:nope@{auth_etcd.endpoint}?timeout=1")
    for b in (good, anonymous, wrong):
        await b.open()
    try:
        service = service_on(good, GroupSettings(default_slots=1))
        assert await service.pre_reboot("auth", "a") is Outcome.GRANTED
        assert await service.pre_reboot("auth", "a") is Outcome.ALREADY_HELD
        with pytest.raises(BackendUnavailable, match="user name is empty"):
            await anonymous.get(LAYOUT.key("auth"))
        with pytest.raises(BackendUnavailable, match="login as 'root' refused"):
            await wrong.get(LAYOUT.key("auth"))
        # A token etcd no longer accepts (expired, or the member restarted) is renewed,
        # with one login for all the requests that found it refused.
        logins = []
        login = good._login

        async def counted(member: int) -> str:
            logins.append(member)
            return await login(member)

        monkeypatch.setattr(good, "_login", counted)
        good._tokens[0] = "stale.token"
        results = await asyncio.gather(*(good.get(LAYOUT.key(f"n{i}")) for i in range(10)))
        assert results == [(None, None)] * 10 and logins == [0]
        good._tokens[0] = "stale.token"
        assert await service.steady_state("auth", "a") is Outcome.RELEASED
        assert logins == [0, 0]
    finally:
        for b in (good, anonymous, wrong):
            await b.close()


async def test_credentials_work_before_auth_is_enabled(
    etcd_server: EtcdServer, unique: str
) -> None:
    """With a user in the URL and auth not (yet) on, etcd answers "not enabled" to the
    login, and lockd goes on without a token, as etcd's own client does."""
    backend = backend_of(f"etcd://lockd:pw@{etcd_server.endpoint}?namespace={unique}/")
    try:
        assert (await backend.compare_and_set("k", b"v", None)).stored
        assert (await backend.get("k"))[0] == b"v"
        assert backend._tokens == {0: ""}
    finally:
        await backend.close()


# TLS


class TlsEtcd:
    """One etcd member that serves clients over TLS and requires a client certificate."""

    def __init__(self, workdir: Path, certs: dict[str, Path]) -> None:
        self.binary = find_binary("etcd", "etcd-server")
        self.workdir = workdir
        self.certs = certs
        self.port = free_port()
        self.proc: Proc | None = None

    def start(self) -> TlsEtcd:
        peer = f"http://127.0.0.1:{free_port()}"
        argv = [self.binary, "--name", "tls", "--data-dir", str(self.workdir / "tls.etcd"),
                "--listen-client-urls", f"https://127.0.0.1:{self.port}",
                "--advertise-client-urls", f"https://127.0.0.1:{self.port}",
                "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                "--initial-cluster", f"tls={peer}",
                "--cert-file", str(self.certs["server.crt"]),
                "--key-file", str(self.certs["server.key"]),
                "--trusted-ca-file", str(self.certs["ca.crt"]), "--client-cert-auth",
                "--logger=zap", "--log-outputs=stderr"]
        self.proc = Proc(argv, self.workdir / "tls.log").start()
        wait_for_port(self.port, 30, proc=self.proc.proc)
        return self

    def stop(self) -> None:
        if self.proc:
            self.proc.stop()


def make_certs(where: Path, server_usage: str = "serverAuth,clientAuth") -> dict[str, Path]:
    """A throwaway CA, a server certificate for 127.0.0.1 and a client certificate.

    etcd's JSON gateway is etcd calling itself, with its own server certificate as the
    client certificate: with --client-cert-auth that certificate must allow clientAuth.
    """
    openssl = find_binary("openssl", "openssl")
    where.mkdir(parents=True, exist_ok=True)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], cwd=where, check=True, capture_output=True)

    run("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-subj", "/CN=lockd-test-ca",
        "-days", "2")
    for name, usage in (("server", server_usage), ("client", "clientAuth")):
        (where / f"{name}.ext").write_text(
            f"subjectAltName=IP:127.0.0.1\nextendedKeyUsage={usage}\n"
        )
        run("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}")
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", f"{name}.crt", "-days", "2", "-extfile", f"{name}.ext")
    return {p.name: p for p in where.iterdir()}


@pytest.fixture(scope="module")
def tls_etcd(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    workdir = tmp_path_factory.mktemp("etcd-tls")
    server = TlsEtcd(workdir, make_certs(workdir / "certs")).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def tls_backend(tls_etcd: TlsEtcd) -> AsyncIterator[Etcd3Backend]:
    c = tls_etcd.certs
    backend = backend_of(
        f"etcd://127.0.0.1:{tls_etcd.port}"
        f"?tls_ca={c['ca.crt']}&tls_cert={c['client.crt']}&tls_key={c['client.key']}"
    )
    await backend.open()
    try:
        yield backend
    finally:
        await backend.close()


async def test_tls_with_client_certificate(tls_etcd: TlsEtcd, tls_backend: Etcd3Backend) -> None:
    service = service_on(tls_backend, GroupSettings(default_slots=1))
    assert await _eventually(lambda: service.pre_reboot("tls", "a")) is Outcome.GRANTED
    assert await service.pre_reboot("tls", "b") is Outcome.FULL
    # Without a client certificate the server refuses us: 503, not a crash.
    no_cert = backend_of(
        f"etcd://127.0.0.1:{tls_etcd.port}?tls_ca={tls_etcd.certs['ca.crt']}&timeout=1"
    )
    await no_cert.open()
    try:
        with pytest.raises(BackendUnavailable):
            await no_cert.get("k")
    finally:
        await no_cert.close()
    # What the gateway stored is what a bare TLS client reads.
    c = tls_etcd.certs
    context = ssl.create_default_context(cafile=str(c["ca.crt"]))
    context.load_cert_chain(str(c["client.crt"]), str(c["client.key"]))
    async with RawEtcd(f"127.0.0.1:{tls_etcd.port}", ssl_context=context) as raw:
        kv = await raw.get(LAYOUT.key("tls").encode())
        assert kv is not None and [h["id"] for h in json.loads(kv.value)["holders"]] == ["a"]


async def test_tls_server_certificate_without_client_auth_is_explained(
    tmp_path: Path,
) -> None:
    """A server certificate for serverAuth only: etcd's gateway cannot reach etcd under
    --client-cert-auth, and the 503's message says what to change."""
    server = TlsEtcd(tmp_path, make_certs(tmp_path / "certs", server_usage="serverAuth")).start()
    c = server.certs
    backend = backend_of(
        f"etcd://127.0.0.1:{server.port}"
        f"?tls_ca={c['ca.crt']}&tls_cert={c['client.crt']}&tls_key={c['client.key']}&timeout=1"
    )
    try:
        # The gateway's own connection fails in a few ways (closed, reset, still dialling
        # when lockd's deadline comes); each answer that names the dial names the fix.
        deadline = time.monotonic() + 15
        messages = []
        while time.monotonic() < deadline:
            with pytest.raises(BackendUnavailable) as err:
                await backend.get("k")
            messages.append(str(err.value))
            if "extendedKeyUsage clientAuth" in messages[-1]:
                break
        assert "extendedKeyUsage clientAuth" in messages[-1], messages
    finally:
        await backend.close()
        server.stop()


async def test_tls_server_name(tls_etcd: TlsEtcd) -> None:
    """``tls_server_name`` is the name the certificate must carry, not the host dialled."""
    c = tls_etcd.certs
    files = f"tls_ca={c['ca.crt']}&tls_cert={c['client.crt']}&tls_key={c['client.key']}"
    right = backend_of(f"etcd://localhost:{tls_etcd.port}?{files}&tls_server_name=127.0.0.1")
    wrong = backend_of(
        f"etcd://127.0.0.1:{tls_etcd.port}?{files}&tls_server_name=etcd.example&timeout=1"
    )
    try:
        assert await _until_up(lambda: right.get("k")) == (None, None)
        with pytest.raises(BackendUnavailable, match=r"etcd\.example"):
            await wrong.get("k")
    finally:
        await right.close()
        await wrong.close()


# airlock's config file, unchanged


def test_airlock_etcd3_section_maps_onto_the_url(tmp_path: Path) -> None:
    certs = {n: tmp_path / n for n in ("ca.pem", "client.pem", "client-key.pem")}
    for path in certs.values():
        path.write_text("x")
    config = tmp_path / "config.toml"
    config.write_text(
        f"""
[etcd3]
endpoints = ["https://10.0.0.1:2379", "https://10.0.0.2:2379"]
transaction_timeout_ms = 3000
server_ca_cert_path = "{certs['ca.pem']}"
client_cert_pub_path = "{certs['client.pem']}"
client_cert_key_path = "{certs['client-key.pem']}"
"""
    )
    settings = load(str(config), environ={})
    backend, store = store_of(settings.backend_url)
    assert isinstance(store.layout, AirlockLayout) and backend.namespace == ""
    assert backend.endpoints == [("10.0.0.1", 2379), ("10.0.0.2", 2379)]
    assert backend.tls is not None
    assert (backend.tls.ca, backend.tls.cert, backend.tls.key) == (
        str(certs["ca.pem"]),
        str(certs["client.pem"]),
        str(certs["client-key.pem"]),
    )
    assert settings.timeout == 3.0
    # Each try of one member gets a share of the transaction timeout, so a dead member
    # leaves time to ask the next one.
    assert backend.timeout <= 1.5
    # lockd's own names for the same files work too.
    lockd_style = load(
        None,
        environ={
            "LOCKD_ETCD3__ENDPOINTS": "http://127.0.0.1:2379",
            "LOCKD_ETCD3__TLS_CA": str(certs["ca.pem"]),
        },
    )
    tls = store_of(lockd_style.backend_url)[0].tls
    assert tls is not None and tls.ca == str(certs["ca.pem"])


def post(url: str, op: str, id_: str, group: str) -> tuple[int, dict]:
    data = json.dumps({"client_params": {"id": id_, "group": group}}).encode()
    req = urllib.request.Request(url.rstrip("/") + f"/v1/{op}", data=data, method="POST",
                                 headers={"fleet-lock-protocol": "true"})
    try:
        with urllib.request.urlopen(req, timeout=15) as resp:
            return resp.status, json.load(resp)
    except urllib.error.HTTPError as err:
        return err.code, json.load(err)


async def test_lockd_serves_an_unchanged_airlock_config(
    tmp_path: Path, etcd_server: EtcdServer, unique: str
) -> None:
    group = f"t-{unique}"
    config = tmp_path / "config.toml"
    config.write_text(
        f"""
[service]
address = "127.0.0.1"
port = 3333

[etcd3]
endpoints = ["http://{etcd_server.endpoint}"]
transaction_timeout_ms = 4000

[lock]
default_group_name = "{group}"
default_slots = 1

[[lock.groups]]
name = "{group}-workers"
slots = 2
"""
    )
    lockd = Lockd(tmp_path, "--config", str(config)).start()
    raw = RawEtcd(etcd_server.endpoint)
    try:
        assert (await asyncio.to_thread(post, lockd.url, "pre-reboot", "n1", group))[0] == 200
        status, doc = await asyncio.to_thread(post, lockd.url, "pre-reboot", "n2", group)
        assert (status, doc["kind"]) == (423, "failed_lock_semaphore_full")
        for node in ("n1", "n2"):
            got = await asyncio.to_thread(post, lockd.url, "pre-reboot", node, f"{group}-workers")
            assert got[0] == 200
        # The keys are airlock's own, in airlock's own format.
        kv = await raw.get(f"com.coreos.airlock/groups/{group}/v1/semaphore".encode())
        assert kv is not None
        value = json.loads(kv.value)
        assert (value["total_slots"], value["holders"]) == (1, ["n1"])
        kv = await raw.get(f"com.coreos.airlock/groups/{group}-workers/v1/semaphore".encode())
        assert kv is not None and json.loads(kv.value)["holders"] == ["n1", "n2"]
    finally:
        await raw.close()
        lockd.stop()
