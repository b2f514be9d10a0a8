"""The auction as people run it: real ``agora`` processes, including ``kill -9``."""

from __future__ import annotations

import json
import signal
import socket

import pytest

from agora.multicast import free_udp_port, random_group
from tests.conftest import PASSWORD, AgoraProcess, agora_env, run_agora
from tests.test_auction_net import write_item


def free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Deployment:
    """A broker process, a registered auctioneer (service) and two registered bidders."""

    def __init__(self, root) -> None:
        self.root = root
        self.env = agora_env(AGORA_PASSWORD=PASSWORD)
        self.procs: list[AgoraProcess] = []
        self.broker = self.start("broker", "start", "--data-dir", str(root / "broker"),
                                 "--bind", "tcp://127.0.0.1:0")
        match = self.broker.expect(r"ready at (\S+) fingerprint (\S+)")
        self.endpoint, self.fingerprint = match.group(1), match.group(2)
        self.auctioneer = self.register("Auctioneer", "service")
        self.homes = {name: self.register(name) for name in ("Ana Lima", "Bob Costa")}

    def start(self, *args: str) -> AgoraProcess:
        proc = AgoraProcess(list(args), self.env)
        self.procs.append(proc)
        return proc

    def register(self, name: str, kind: str = "person") -> tuple[str, str]:
        out = run_agora("admin", "enroll", "--name", name, "--level", "2", "--kind", kind,
                        "--data-dir", str(self.root / "broker"), "--json", env=self.env)
        assert out.returncode == 0, out.stderr
        enrolled = json.loads(out.stdout)
        home = str(self.root / f"home-{enrolled['username']}")
        out = run_agora("register", "--username", enrolled["username"], "--one-time-id",
                        enrolled["one_time_id"], "--fingerprint", self.fingerprint, "--home",
                        home, "--broker", self.endpoint, env=self.env)
        assert out.returncode == 0, out.stderr
        return enrolled["username"], home

    def start_auctioneer(self, items, data, ports: tuple[int, int, int],
                         group: str) -> AgoraProcess:
        proc = self.start("auctioneer", "start", "--items", str(items), "--home",
                          self.auctioneer[1], "--broker", self.endpoint, "--data-dir",
                          str(data), "--bind", f"tcp://127.0.0.1:{ports[0]}", "--pub",
                          f"tcp://127.0.0.1:{ports[1]}", "--group", group, "--port",
                          str(ports[2]), "--soft-close", "1", "--pause", "0.2")
        proc.expect("auctioneer ready")
        return proc

    def auction(self, who: str, *args: str, endpoint: str):
        return run_agora("auction", *args, "--home", self.homes[who][1], "--broker",
                         self.endpoint, "--auctioneer", self.auctioneer[0], "--endpoint",
                         endpoint, env=self.env, timeout=30)

    def stop(self) -> None:
        for proc in self.procs:
            proc.kill()


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    d = Deployment(tmp_path_factory.mktemp("auction"))
    yield d
    d.stop()


def test_kill_9_mid_auction_keeps_every_acknowledged_bid(deployment, tmp_path):
    items = tmp_path / "items"
    items.mkdir()
    write_item(items, "01-clock.json", "clock", duration=60, title="Clock [1970s] [/misc]")
    ports = (free_tcp_port(), free_tcp_port(), free_udp_port())
    group = random_group()
    endpoint = f"tcp://127.0.0.1:{ports[0]}"
    auctioneer = deployment.start_auctioneer(items, tmp_path / "data", ports, group)
    first = deployment.auction("Ana Lima", "bid", "12.00", endpoint=endpoint)
    assert first.returncode == 0 and "accepted: 12.00 on clock" in first.stdout, first.stderr
    second = deployment.auction("Bob Costa", "bid", "13.00", endpoint=endpoint)
    assert second.returncode == 0, second.stderr
    auctioneer.kill()  # SIGKILL: no clean-up of any kind
    deployment.start_auctioneer(items, tmp_path / "data", ports, group)
    low = deployment.auction("Ana Lima", "bid", "13.50", endpoint=endpoint)
    assert low.returncode == 1
    assert "rejected: bid must be at least 14.00 [bid-too-low]" in low.stderr
    joined = deployment.auction("Ana Lima", "join", "--json", endpoint=endpoint)
    state = json.loads(joined.stdout)["state"]
    assert [(b["bidder"], b["amount"]) for b in state["bids"]] == \
        [("ana.lima", 1200), ("bob.costa", 1300)]
    assert (items / "01-clock.json").exists()  # still running, not done
    shown = deployment.auction("Bob Costa", "join", endpoint=endpoint)  # for a person
    assert shown.returncode == 0, shown.stderr
    assert "Joined as bob.costa" in shown.stdout
    assert "Now: clock — Clock [1970s] [/misc]" in shown.stdout  # brackets as written


def test_watch_shows_the_winner_and_results_list_it(deployment, tmp_path):
    items = tmp_path / "items"
    items.mkdir()
    ports = (free_tcp_port(), free_tcp_port(), free_udp_port())
    endpoint = f"tcp://127.0.0.1:{ports[0]}"
    deployment.start_auctioneer(items, tmp_path / "data", ports, random_group())
    watcher = deployment.start("auction", "watch", "--json", "--items", "1", "--max-time",
                               "30", "--home", deployment.homes["Bob Costa"][1], "--broker",
                               deployment.endpoint, "--auctioneer", deployment.auctioneer[0],
                               "--endpoint", endpoint)
    watcher.expect('"kind": "joined"')
    write_item(items, "01-vase.json", "vase", duration=3)
    watcher.expect('"kind": "opened"')
    bid = deployment.auction("Ana Lima", "bid", "10.00", endpoint=endpoint)
    assert bid.returncode == 0, bid.stderr
    closed = json.loads(watcher.expect(r'^{.*"kind": "closed".*').group(0))
    assert (closed["winner"], closed["price_cents"], closed["sold"]) == \
        ("ana.lima", 1000, True)
    assert watcher.popen.wait(15) == 0  # --items 1: it stops by itself after one item
    results = deployment.auction("Bob Costa", "results", "--json", endpoint=endpoint)
    assert json.loads(results.stdout)[0]["winner"] == "ana.lima"
    table = deployment.auction("Bob Costa", "results", endpoint=endpoint)  # for a person
    assert table.returncode == 0, table.stderr
    [row] = [line for line in table.stdout.splitlines() if "vase" in line]
    assert ["The vase", "ana.lima", "10.00"] == [cell.strip() for cell in row.split("│")][3:6]


def test_a_person_cannot_run_the_auctioneer_and_is_told_in_one_line(deployment, tmp_path):
    out = run_agora("auctioneer", "start", "--items", str(tmp_path), "--home",
                    deployment.homes["Ana Lima"][1], "--broker", deployment.endpoint,
                    "--data-dir", str(tmp_path / "data"), "--bind", "tcp://127.0.0.1:0",
                    env=deployment.env, timeout=30)
    assert out.returncode == 1
    assert out.stderr.strip() == ("error: ana.lima is a person principal; enroll the "
                                  "auctioneer with --kind service")
    assert not (tmp_path / "data" / "auction.db").exists()


def test_unregistered_home_cannot_join(deployment, tmp_path):
    out = run_agora("auction", "join", "--home", str(tmp_path / "nobody"), "--broker",
                    deployment.endpoint, env=deployment.env)
    assert out.returncode == 1 and "no credentials" in out.stderr


def test_watch_says_when_the_auctioneer_falls_silent_recovers_and_ctrl_c_is_130(deployment,
                                                                               tmp_path):
    items = tmp_path / "items"
    items.mkdir()
    ports = (free_tcp_port(), free_tcp_port(), free_udp_port())
    group = random_group()
    auctioneer = deployment.start_auctioneer(items, tmp_path / "data", ports, group)
    watcher = deployment.start("auction", "watch", "--json", "--max-time", "60", "--home",
                               deployment.homes["Bob Costa"][1], "--broker",
                               deployment.endpoint, "--auctioneer", deployment.auctioneer[0],
                               "--endpoint", f"tcp://127.0.0.1:{ports[0]}")
    watcher.expect('"kind": "joined"')
    auctioneer.kill()  # SIGKILL: its heartbeats stop
    silent = json.loads(watcher.expect(r'^{"kind": "silent".*').group(0))
    assert silent["seconds"] >= 3
    deployment.start_auctioneer(items, tmp_path / "data", ports, group)
    watcher.expect(r'^{"kind": "heard"}')
    watcher.popen.send_signal(signal.SIGINT)
    assert watcher.popen.wait(15) == 130
    assert not any(line.startswith("error") for line in watcher.stderr_lines)


def test_the_watch_screen_shows_silence_instead_of_a_countdown():
    from rich.console import Console

    from agents.auction_view import AuctionView
    from cli.auction_cmd import render

    view = AuctionView.__new__(AuctionView)  # a bare view: only what render reads
    view.item = {"id": "vase", "title": "Blue vase", "start_cents": 1000}
    view.status, view.closes_at, view.minimum, view.best, view.epoch = "open", 0.0, 1000, \
        None, 1
    view.bids, view.results = [], []
    console = Console(width=100, record=True)
    console.print(render(view, 100.0, silent_for=7.2))
    text = console.export_text()
    assert "no word from the auctioneer for 7 s — waiting for it to come back" in text
    assert "time left unknown" in text and "s left" not in text


def test_watch_is_told_when_the_operator_revokes_the_watcher(deployment, tmp_path):
    items = tmp_path / "items"
    items.mkdir()
    ports = (free_tcp_port(), free_tcp_port(), free_udp_port())
    deployment.start_auctioneer(items, tmp_path / "data", ports, random_group())
    username, home = deployment.register("Carla Dias")
    watcher = deployment.start("auction", "watch", "--json", "--max-time", "60", "--home",
                               home, "--broker", deployment.endpoint, "--auctioneer",
                               deployment.auctioneer[0], "--endpoint",
                               f"tcp://127.0.0.1:{ports[0]}")
    watcher.expect('"kind": "joined"')
    revoked = run_agora("admin", "revoke", username, "--data-dir",
                        str(deployment.root / "broker"), env=deployment.env)
    assert revoked.returncode == 0, revoked.stderr
    assert watcher.popen.wait(15) == 1
    assert watcher.stderr_lines[-1:] == ["your session was ended: the operator revoked your "
                                         "access"]


def test_a_second_auctioneer_is_refused_before_it_asks_for_a_password_or_logs_in(tmp_path):
    import os

    from auctioneer.server import claim

    running = claim(tmp_path / "auctioneer")  # as the auctioneer already serving holds it
    try:
        (tmp_path / "items").mkdir()
        result = run_agora("auctioneer", "start", "--items", str(tmp_path / "items"),
                           "--data-dir", str(tmp_path / "auctioneer"), "--home",
                           str(tmp_path / "nobody"), env=agora_env(), input="", timeout=20)
    finally:
        running.release()
    assert result.returncode == 1
    assert result.stderr.strip() == (f"error: another auctioneer is already running on "
                                     f"{tmp_path / 'auctioneer'} (pid {os.getpid()})")
    assert not (tmp_path / "nobody").exists()
