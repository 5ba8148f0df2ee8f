"""Real Redis high-availability deployments for the tests, on free ports, stopped by pid: three
redis-servers (a master and two replicas) watched by three redis-sentinels (Debian's binary),
and a Redis Cluster of three masters.

The sentinels decide fast (a master silent for 1 s is down, a quorum of 2 fails it over) so a
test can SIGKILL the master and see a replica promoted within seconds.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import redis

from tests.support.procs import (
    free_port,
    redis_server_cmd,
    require_binary,
    stop_process,
    wait_for_port,
)

MASTER_NAME = "shipwatch-test"
DOWN_AFTER_MS = 1000
FAILOVER_TIMEOUT_MS = 5000


@dataclass
class SentinelRig:
    tmp: Path
    servers: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict)
    sentinels: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{port}" for port in self.sentinels)
        return f"redis+sentinel://{hosts}/{MASTER_NAME}/0"

    def master_port(self) -> int:
        """The port the sentinels now name as master."""
        port = next(iter(self.sentinels))
        with redis.Redis(port=port, socket_timeout=2, decode_responses=True) as s:
            _host, master = s.sentinel_get_master_addr_by_name(MASTER_NAME)
        return int(master)

    def kill_master(self) -> int:
        """SIGKILL the master (no shutdown, no last save): the port it had."""
        port = self.master_port()
        proc = self.servers.pop(port)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=5)
        return port

    def wait_for_new_master(self, old: int, timeout: float = 30.0) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(redis.RedisError):
                port = self.master_port()
                if port != old:
                    return port
            time.sleep(0.1)
        raise TimeoutError(f"no replica was promoted within {timeout}s")


def _start(cmd: list[str], port: int, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    wait_for_port(port)
    return proc


def _wait_for_replicas(port: int, count: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    with redis.Redis(port=port, socket_timeout=2, decode_responses=True) as client:
        while time.monotonic() < deadline:
            info = client.info("replication")
            online = [
                v
                for k, v in info.items()
                if k.startswith("slave") and isinstance(v, dict) and v.get("state") == "online"
            ]
            if len(online) >= count:
                return
            time.sleep(0.1)
    raise TimeoutError(f"the replicas did not sync with the master on {port}")


def _wait_for_sentinels(ports: list[int], timeout: float = 30.0) -> None:
    """Until every sentinel knows both replicas and the other sentinels (a failover needs a
    quorum that can elect a leader)."""
    deadline = time.monotonic() + timeout
    for port in ports:
        with redis.Redis(port=port, socket_timeout=2, decode_responses=True) as s:
            while True:
                state = s.sentinel_master(MASTER_NAME)
                if state["num-slaves"] >= 2 and state["num-other-sentinels"] >= len(ports) - 1:
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"sentinel {port} does not see the deployment: {state}")
                time.sleep(0.2)


def _sentinel_config(path: Path, port: int, master_port: int) -> None:
    path.write_text(
        f"port {port}\nbind 127.0.0.1\ndir {path.parent}\n"
        f"sentinel monitor {MASTER_NAME} 127.0.0.1 {master_port} 2\n"
        f"sentinel down-after-milliseconds {MASTER_NAME} {DOWN_AFTER_MS}\n"
        f"sentinel failover-timeout {MASTER_NAME} {FAILOVER_TIMEOUT_MS}\n"
        f"sentinel parallel-syncs {MASTER_NAME} 1\n",
        encoding="utf-8",
    )


@contextlib.contextmanager
def sentinel_rig(tmp: Path) -> Iterator[SentinelRig]:
    sentinel_bin = require_binary("redis-sentinel")
    rig = SentinelRig(tmp)
    try:
        master = free_port()
        for i, port in enumerate([master, free_port(), free_port()]):
            data = tmp / f"redis-{i}"
            data.mkdir()
            cmd = redis_server_cmd(port, data)
            if port != master:
                cmd += ["--replicaof", "127.0.0.1", str(master)]
            rig.servers[port] = _start(cmd, port, data / "redis.log")
        _wait_for_replicas(master, 2)
        for i in range(3):
            port = free_port()
            conf = tmp / f"sentinel-{i}" / "sentinel.conf"
            conf.parent.mkdir()
            _sentinel_config(conf, port, master)
            rig.sentinels[port] = _start([sentinel_bin, str(conf)], port, conf.parent / "log")
        _wait_for_sentinels(list(rig.sentinels))
        yield rig
    finally:
        for proc in [*rig.sentinels.values(), *rig.servers.values()]:
            stop_process(proc)


@contextlib.contextmanager
def redis_cluster(tmp: Path, masters: int = 3) -> Iterator[str]:
    """A Redis Cluster of ``masters`` redis-servers on free ports, slots spread over them by
    ``redis-cli --cluster create``: the ``redis+cluster://`` URL of its nodes."""
    cli = require_binary("redis-cli")
    procs: list[subprocess.Popen[bytes]] = []
    ports = [free_port() for _ in range(masters)]
    try:
        for i, port in enumerate(ports):
            data = tmp / f"cluster-{i}"
            data.mkdir()
            # The bus port defaults to port + 10000, past 65535 for a high free port: name one.
            cmd = [*redis_server_cmd(port, data), "--cluster-enabled", "yes",
                   "--cluster-port", str(free_port()),
                   "--cluster-config-file", str(data / "nodes.conf"),
                   "--cluster-node-timeout", "2000"]  # fmt: skip
            procs.append(_start(cmd, port, data / "redis.log"))
        nodes = [f"127.0.0.1:{port}" for port in ports]
        subprocess.run(
            [cli, "--cluster", "create", *nodes, "--cluster-replicas", "0", "--cluster-yes"],
            check=True, capture_output=True, timeout=30,
        )  # fmt: skip
        _wait_for_cluster(ports)
        yield "redis+cluster://" + ",".join(nodes)
    finally:
        for proc in procs:
            stop_process(proc)


def _wait_for_cluster(ports: list[int], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    for port in ports:
        with redis.Redis(port=port, socket_timeout=2, decode_responses=True) as node:
            while "cluster_state:ok" not in _cluster_info(node):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the cluster node on {port} never reported ok")
                time.sleep(0.2)


def _cluster_info(node: redis.Redis) -> str:
    info = node.execute_command("CLUSTER INFO")  # type: ignore[no-untyped-call]
    if isinstance(info, dict):  # parsed by the client's callback
        return "\n".join(f"{k}:{v}" for k, v in info.items())
    return str(info)
