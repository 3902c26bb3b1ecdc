"""The supervisor's API watch of the gang announcement (omnitrain/gang_watch.py) without a cluster: which source
wins, the watch stream's events, the back-off, and the watch loop against a scripted API server."""

from __future__ import annotations

import io
import json
import urllib.error
import urllib.parse

import pytest

from omnitrain import gang
from omnitrain.gang_watch import (
    ApiAccess,
    ApiGone,
    Backoff,
    GangSource,
    GangWatch,
    announcement_of,
    api_access_from_env,
    consume_events,
    newest,
    parse_watch_line,
)


def announced(generation: int) -> gang.GangAnnouncement:
    return gang.GangAnnouncement(
        generation=generation, members={"p0": 0}, master_addr="n0.j.ns.svc", master_port=20000, nnodes=1
    )


def configmap(generation: int | None, version: str) -> dict:
    data = {} if generation is None else {gang.GANG_FILE: announced(generation).to_json()}
    return {"metadata": {"name": "j-gang", "resourceVersion": version}, "data": data}


def event(kind: str, obj: dict) -> bytes:
    return (json.dumps({"type": kind, "object": obj}) + "\n").encode()


def test_the_newer_generation_wins_and_the_api_copy_on_a_tie():
    assert newest(announced(3), announced(2)) == (announced(3), "api")
    assert newest(announced(2), announced(3)) == (announced(3), "mount")
    assert newest(announced(2), announced(2)) == (announced(2), "api")
    assert newest(None, announced(1)) == (announced(1), "mount")
    assert newest(announced(1), None) == (announced(1), "api")
    assert newest(None, None) == (None, "mount")


def test_watch_lines_parse_and_bad_lines_are_skipped():
    parsed = parse_watch_line(event("MODIFIED", configmap(4, "17")))
    assert parsed is not None and parsed.type == "MODIFIED" and parsed.resource_version == "17"
    assert announcement_of(parsed.object) == announced(4)
    assert parse_watch_line(b"\n") is None
    assert parse_watch_line(b"{not json") is None
    assert parse_watch_line(b'{"type": "ADDED"}') is None  # no object
    gone = parse_watch_line(event("ERROR", {"kind": "Status", "code": 410, "message": "too old"}))
    assert gone is not None and gone.expired
    assert announcement_of(configmap(None, "1")) is None
    assert announcement_of({"data": {gang.GANG_FILE: '{"generation": "x"}'}}) is None


def test_events_feed_the_newest_announcement_and_move_the_resource_version():
    seen: list[gang.GangAnnouncement | None] = []
    lines = [
        event("MODIFIED", configmap(1, "20")),
        b"garbage\n",
        event("BOOKMARK", {"metadata": {"resourceVersion": "25"}}),
    ]
    assert consume_events(lines, seen.append, "10") == "25"
    assert seen == [announced(1)]
    with pytest.raises(ApiGone, match="410"):
        consume_events([event("ERROR", {"code": 410})], seen.append, "25")
    with pytest.raises(ApiGone, match="deleted"):
        consume_events([event("DELETED", configmap(1, "30"))], seen.append, "25")


def test_backoff_doubles_to_its_cap_and_starts_again_after_a_reset():
    backoff = Backoff(first=0.5, cap=3.0)
    assert [backoff.next() for _ in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    backoff.reset()
    assert backoff.next() == 0.5


def test_api_access_needs_every_piece_and_says_which_is_missing():
    env = {
        "OMNITRAIN_GANG_CONFIGMAP": "j-gang",
        "OMNITRAIN_GANG_TOKEN_FILE": "/t",
        "OMNITRAIN_GANG_CA_FILE": "/ca",
        "POD_NAMESPACE": "ns",
        "KUBERNETES_SERVICE_HOST": "10.96.0.1",
        "KUBERNETES_SERVICE_PORT": "443",
    }
    access, why = api_access_from_env(env)
    assert access is not None and why == ""
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(access.watch_url("42")).query)
    assert query["fieldSelector"] == ["metadata.name=j-gang"] and query["resourceVersion"] == ["42"]
    assert access.get_url() == "https://10.96.0.1:443/api/v1/namespaces/ns/configmaps/j-gang"
    access, why = api_access_from_env({k: v for k, v in env.items() if k != "OMNITRAIN_GANG_TOKEN_FILE"})
    assert access is None and "OMNITRAIN_GANG_TOKEN_FILE" in why


class ScriptedApi:
    """Answers the watch's requests in order: a dict is a GET's JSON, a list is a watch stream, an exception is
    raised. Records each request (url, token) so the test sees what was asked."""

    def __init__(self, answers: list) -> None:
        self.answers = list(answers)
        self.requests: list[tuple[str, str]] = []

    def __call__(self, request, timeout, ca_file):
        self.requests.append((request.full_url, request.get_header("Authorization")))
        if not self.answers:
            raise ConnectionError("script over")
        answer = self.answers.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        if isinstance(answer, dict):
            return io.BytesIO(json.dumps(answer).encode())
        return io.BytesIO(b"".join(answer))


def test_the_watch_loop_gets_watches_and_gets_again_after_410_and_errors(tmp_path):
    token = tmp_path / "token"
    token.write_text("first\n")
    access = ApiAccess("10.96.0.1", "443", "ns", "j-gang", str(token), str(tmp_path / "ca.crt"))
    api = ScriptedApi(
        [
            configmap(1, "10"),  # GET
            [event("MODIFIED", configmap(2, "11"))],  # watch from 10: generation 2, then the server ends it
            [event("ERROR", {"code": 410, "message": "too old"})],  # watch from 11: expired
            urllib.error.URLError("connection refused"),  # GET: the API server is down
            configmap(3, "30"),  # GET: back, generation 3 already
        ]
    )
    delays: list[float] = []
    times = iter(range(0, 1000, 5))  # each watch appears to last 5 s: a normal watch, not a spin

    def sleep(delay: float) -> bool:
        delays.append(delay)
        return not api.answers  # True: stopped (the script is over)

    watch = GangWatch(access, opener=api, clock=lambda: float(next(times)), sleep=sleep)

    def swap_token(*args):
        token.write_text("rotated\n")  # the kubelet rotates the projected file between requests
        return real(*args)

    real = watch._open
    watch._open = swap_token
    watch.run()  # returns once the script is over and the loop backs off (sleep says stopped)
    assert watch.latest() == announced(3)
    urls = [urllib.parse.urlsplit(u) for u, _ in api.requests]
    names = [u.path.rsplit("/", 1)[-1] for u in urls]
    assert names == ["j-gang", "configmaps", "configmaps", "j-gang", "j-gang", "configmaps"]
    assert urllib.parse.parse_qs(urls[1].query)["resourceVersion"] == ["10"]
    assert urllib.parse.parse_qs(urls[2].query)["resourceVersion"] == ["11"]
    assert urllib.parse.parse_qs(urls[5 - 1].query) == {}  # a plain GET after the error
    assert api.requests[0][1] == "Bearer first" and api.requests[1][1] == "Bearer rotated"
    assert urllib.parse.parse_qs(urls[5].query)["resourceVersion"] == ["30"]
    # after the 410, after the refused connection, after the script's end: back-off, never a tight loop
    assert delays == [0.5, 1.0, 2.0]
    assert watch.error == "ConnectionError: script over"


def test_an_older_event_never_replaces_a_newer_announcement(tmp_path):
    watch = GangWatch(ApiAccess("h", "1", "ns", "j-gang", "t", "ca"))
    watch.offer(announced(5))
    watch.offer(announced(4))
    watch.offer(None)
    assert watch.latest() == announced(5)


def test_the_reader_takes_the_newer_of_api_and_mount_and_says_which(tmp_path):
    mounted = tmp_path / gang.GANG_FILE
    mounted.write_text(announced(1).to_json())
    watch = GangWatch(ApiAccess("h", "1", "ns", "j-gang", "t", "ca"))
    source = GangSource(str(mounted), watch)
    assert source.read() == announced(1) and source.source == "mount"  # the watch has not answered yet
    watch.offer(announced(2))
    assert source.read() == announced(2) and source.source == "api"
    assert "API watch" in source.describe()
    mounted.write_text(announced(3).to_json())  # the API copy lags (watch broken): the mount is newer
    assert source.read() == announced(3) and source.source == "mount"
    alone = GangSource(str(mounted), None, "no API access (OMNITRAIN_GANG_TOKEN_FILE not set)")
    assert alone.read() == announced(3) and "OMNITRAIN_GANG_TOKEN_FILE" in alone.describe()
