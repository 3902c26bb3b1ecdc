"""The gang announcement through the API (docs/resilience.md, "In-place gang restart"): the supervisor's fast path.

A mounted ConfigMap is refreshed on the kubelet's sync (up to a minute plus its cache on a real kubelet), so the
pods that stay would learn of a new generation late. Where the pod has an API token (a projected
serviceAccountToken volume whose ServiceAccount may only read its job's `<job>-gang` ConfigMap, docs/operator.md),
a thread GETs that ConfigMap, then watches it (`fieldSelector=metadata.name=<name>` from the GET's
resourceVersion; a 410 or any error: GET again, with back-off) and keeps the newest announcement in memory.
`GangSource.read()` answers the newer generation of (that copy, the mounted file): the mount stays the fallback
with no token, with the API server down, or before the watch's first answer.

Plain urllib + ssl + json: the trainer image need not have the kubernetes client, and the supervisor never imports
kopf. Nothing here raises into the supervisor: errors are logged and retried.
"""

from __future__ import annotations

import json
import logging
import ssl
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from omnitrain.gang import GANG_FILE, GangAnnouncement, read_announcement

log = logging.getLogger("omnitrain.watchdog")

# The pod's side of the contract (docs/contracts.md): the operator sets these on in-place pods.
ENV_GANG_CONFIGMAP = "OMNITRAIN_GANG_CONFIGMAP"  # the ConfigMap to watch (`<job>-gang`)
ENV_GANG_TOKEN_FILE = "OMNITRAIN_GANG_TOKEN_FILE"  # projected serviceAccountToken (rotated by the kubelet)
ENV_GANG_CA_FILE = "OMNITRAIN_GANG_CA_FILE"  # the cluster CA (kube-root-ca.crt, projected beside the token)
ENV_POD_NAMESPACE = "POD_NAMESPACE"  # downward API metadata.namespace
ENV_SERVICE_HOST, ENV_SERVICE_PORT = "KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT"  # set by every kubelet
API_MOUNT = "/var/run/omnitrain-gang-api"
API_VOLUME = "gang-api"
TOKEN_FILE, CA_FILE = "token", "ca.crt"

WATCH_SECONDS = 60  # the server ends each watch after this; the socket waits a little longer for it
SOCKET_SLACK_SECONDS = 30
REQUEST_TIMEOUT = 10.0  # connect and GET
MIN_WATCH_SECONDS = 1.0  # a watch the server ended sooner counts as a failure (back-off), not as a quiet minute

SOURCE_API, SOURCE_MOUNT = "api", "mount"


@dataclass(frozen=True)
class ApiAccess:
    """Where and how the supervisor reads its gang ConfigMap through the API."""

    host: str
    port: str
    namespace: str
    configmap: str
    token_file: str
    ca_file: str

    @property
    def base(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host  # an IPv6 service address
        return f"https://{host}:{self.port}/api/v1/namespaces/{self.namespace}/configmaps"

    def get_url(self) -> str:
        return f"{self.base}/{urllib.parse.quote(self.configmap)}"

    def watch_url(self, resource_version: str) -> str:
        query = {
            "watch": "1",
            "fieldSelector": f"metadata.name={self.configmap}",  # what `resourceNames` authorizes a watch by
            "resourceVersion": resource_version,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": str(WATCH_SECONDS),
        }
        return f"{self.base}?{urllib.parse.urlencode(query)}"


def api_access_from_env(environ: Mapping[str, str]) -> tuple[ApiAccess | None, str]:
    """The pod's API access, or None and why not (for the status line: the mount is then the only source)."""
    wanted = (ENV_GANG_CONFIGMAP, ENV_GANG_TOKEN_FILE, ENV_GANG_CA_FILE, ENV_POD_NAMESPACE, ENV_SERVICE_HOST)
    missing = [name for name in wanted if not environ.get(name)]
    if missing:
        return None, f"no API access ({', '.join(missing)} not set)"
    return (
        ApiAccess(
            host=environ[ENV_SERVICE_HOST],
            port=environ.get(ENV_SERVICE_PORT) or "443",
            namespace=environ[ENV_POD_NAMESPACE],
            configmap=environ[ENV_GANG_CONFIGMAP],
            token_file=environ[ENV_GANG_TOKEN_FILE],
            ca_file=environ[ENV_GANG_CA_FILE],
        ),
        "",
    )


# --- pure parts ---------------------------------------------------------------------------------------------
def announcement_of(configmap: Mapping) -> GangAnnouncement | None:
    """The announcement a ConfigMap object carries; None when it has none or a bad one (the mount decides then)."""
    text = (configmap.get("data") or {}).get(GANG_FILE)
    if not isinstance(text, str):
        return None
    try:
        return GangAnnouncement.from_json(text)
    except ValueError:
        return None


@dataclass(frozen=True)
class WatchEvent:
    type: str  # ADDED, MODIFIED, DELETED, BOOKMARK, ERROR
    object: dict

    @property
    def resource_version(self) -> str:
        return str((self.object.get("metadata") or {}).get("resourceVersion") or "")

    @property
    def expired(self) -> bool:
        """An ERROR event saying the resourceVersion is too old (410 Gone): GET again and watch from there."""
        return self.type == "ERROR" and self.object.get("code") == 410


def parse_watch_line(line: bytes | str) -> WatchEvent | None:
    """One line of a watch stream; None for a blank or malformed line (skipped, not fatal)."""
    text = line.decode(errors="replace") if isinstance(line, bytes) else line
    if not text.strip():
        return None
    try:
        data = json.loads(text)
    except ValueError:
        return None
    if not isinstance(data, dict) or not isinstance(data.get("type"), str) or not isinstance(data.get("object"), dict):
        return None
    return WatchEvent(data["type"], data["object"])


def newest(api: GangAnnouncement | None, mounted: GangAnnouncement | None) -> tuple[GangAnnouncement | None, str]:
    """The announcement to act on and where it came from: the higher generation; the API copy on a tie (it is
    never older than the mount, which the kubelet fills from the same object later)."""
    if api is None:
        return mounted, SOURCE_MOUNT
    if mounted is not None and mounted.generation > api.generation:
        return mounted, SOURCE_MOUNT
    return api, SOURCE_API


class Backoff:
    """Delays between failed attempts: `first` doubling to `cap`; `reset()` after an answer."""

    def __init__(self, first: float = 0.5, cap: float = 30.0) -> None:
        self.first, self.cap = first, cap
        self._next = first

    def next(self) -> float:
        delay = self._next
        self._next = min(self.cap, self._next * 2)
        return delay

    def reset(self) -> None:
        self._next = self.first


# --- the watch thread ---------------------------------------------------------------------------------------
class ApiGone(Exception):
    """The watch must start again from a GET (410, the object deleted, a stream that broke)."""


Opener = Callable[[urllib.request.Request, float, str], object]  # (request, timeout, CA file) -> response


def _urlopen(request: urllib.request.Request, timeout: float, ca_file: str):
    # The CA is read for every request too: the kubelet keeps the projected kube-root-ca.crt current.
    context = ssl.create_default_context(cafile=ca_file)
    return urllib.request.urlopen(request, timeout=timeout, context=context)


class GangWatch:
    """Keeps the newest announcement the API has shown, from a daemon thread. `latest()` is safe from any thread."""

    def __init__(
        self,
        access: ApiAccess,
        opener: Opener = _urlopen,
        sleep: Callable[[float], bool] | None = None,
        backoff: Backoff | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.access = access
        self._open = opener
        self._stop = threading.Event()
        self._sleep = sleep or self._stop.wait  # returns True once stopped
        self.backoff = backoff or Backoff()
        self._clock = clock
        self._lock = threading.Lock()
        self._latest: GangAnnouncement | None = None
        self.error = ""  # the last failure, for the status line ("" while the watch answers)
        self._thread: threading.Thread | None = None

    def latest(self) -> GangAnnouncement | None:
        with self._lock:
            return self._latest

    def offer(self, announcement: GangAnnouncement | None) -> None:
        """Keep `announcement` if it is newer than what we have (events may repeat an older state after a GET)."""
        if announcement is None:
            return
        with self._lock:
            if self._latest is None or announcement.generation > self._latest.generation:
                self._latest = announcement

    def start(self) -> GangWatch:
        self._thread = threading.Thread(target=self.run, name="gang-watch", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def run(self) -> None:
        """GET, watch, and again, until stopped; never raises (the supervisor's loop must not die with it)."""
        while not self._stop.is_set():
            try:
                version = self._get()
                self.error = ""
                while not self._stop.is_set():
                    started = self._clock()
                    version = self._watch(version)
                    if self._clock() - started >= MIN_WATCH_SECONDS:
                        self.backoff.reset()
                    elif self._sleep(self.backoff.next()):  # a stream the server ends at once: do not spin
                        return
            except ApiGone as why:
                log.info("watchdog: gang watch: %s; reading %s again", why, self.access.configmap)
                if self._sleep(self.backoff.next()):
                    return
            except Exception as exc:  # noqa: BLE001 - anything: log, back off, try again (the mount still works)
                self.error = _describe(exc)
                delay = self.backoff.next()
                log.warning("watchdog: gang watch: %s; the mounted file decides; retrying in %.1fs", self.error, delay)
                if self._sleep(delay):
                    return

    # One GET: the object as it is now, and the resourceVersion to watch from.
    def _get(self) -> str:
        body = self._request(self.access.get_url(), REQUEST_TIMEOUT).read()
        obj = json.loads(body)
        self.offer(announcement_of(obj))
        return str((obj.get("metadata") or {}).get("resourceVersion") or "")

    def _watch(self, version: str) -> str:
        """One watch request from `version` to the server's timeout; returns the version to go on from."""
        response = self._request(self.access.watch_url(version), WATCH_SECONDS + SOCKET_SLACK_SECONDS)
        try:
            version = consume_events(_lines(response), self.offer, version)
        finally:
            close = getattr(response, "close", None)
            if close is not None:
                close()
        return version

    def _request(self, url: str, timeout: float):
        # The token is read for every request: the kubelet rotates the projected file before it expires.
        token = Path(self.access.token_file).read_text().strip()
        headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
        request = urllib.request.Request(url, headers=headers)
        try:
            return self._open(request, timeout, self.access.ca_file)
        except urllib.error.HTTPError as err:
            if err.code == 410:
                raise ApiGone("resourceVersion too old (410)") from err
            raise


def consume_events(lines: Iterable[bytes | str], offer: Callable[[GangAnnouncement | None], None], version: str) -> str:
    """Feed a watch stream's announcements to `offer`; the resourceVersion to watch from next. ApiGone when the
    stream says to start again from a GET (410, the object deleted)."""
    for line in lines:
        event = parse_watch_line(line)
        if event is None:
            continue
        if event.expired:
            raise ApiGone("resourceVersion too old (410)")
        if event.type == "ERROR":
            raise ApiGone(f"watch error {event.object.get('code')}: {event.object.get('message', '')}")
        if event.type in ("ADDED", "MODIFIED"):
            offer(announcement_of(event.object))
        elif event.type == "DELETED":
            raise ApiGone("the ConfigMap was deleted")
        version = event.resource_version or version
    return version


def _lines(response) -> Iterable[bytes]:
    while True:
        line = response.readline()
        if not line:
            return
        yield line


def _describe(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    if isinstance(exc, urllib.error.URLError):
        return f"API unreachable ({exc.reason})"
    if isinstance(exc, OSError) and getattr(exc, "filename", None):
        return f"{exc.strerror or exc}: {exc.filename}"
    return f"{type(exc).__name__}: {exc}"


# --- what the supervisor reads ------------------------------------------------------------------------------
class GangSource:
    """The supervisor's reader: the newer of (the API copy, the mounted file). `source` says which won last, and
    `describe()` says it for a status line."""

    def __init__(self, gang_file: str, watch: GangWatch | None = None, no_api_reason: str = "") -> None:
        self.gang_file = gang_file
        self.watch = watch
        self.no_api_reason = no_api_reason
        self.source = SOURCE_MOUNT

    def read(self) -> GangAnnouncement | None:
        mounted = read_announcement(self.gang_file)
        if self.watch is None:
            self.source = SOURCE_MOUNT
            return mounted
        announcement, source = newest(self.watch.latest(), mounted)
        if source != self.source:
            log.info("watchdog: the gang announcement now comes from the %s", _SOURCE_TEXT[source])
        self.source = source
        return announcement

    def describe(self) -> str:
        if self.watch is None:
            return f"from {self.gang_file}; {self.no_api_reason or 'no API access'}"
        text = f"from {_SOURCE_TEXT[self.source]} ({self.gang_file}; watching ConfigMap {self.watch.access.configmap}"
        return text + (f"; watch failing: {self.watch.error})" if self.watch.error else ")")

    def close(self) -> None:
        if self.watch is not None:
            self.watch.stop()


_SOURCE_TEXT = {SOURCE_API: "API watch", SOURCE_MOUNT: "mounted file"}


def gang_source(gang_file: str, environ: Mapping[str, str]) -> GangSource:
    """The reader a pod's supervisor uses: with API access a watch thread is started, else the mount alone."""
    access, why = api_access_from_env(environ)
    if access is None:
        return GangSource(gang_file, None, why)
    return GangSource(gang_file, GangWatch(access).start())


__all__ = [
    "API_MOUNT",
    "API_VOLUME",
    "CA_FILE",
    "ENV_GANG_CA_FILE",
    "ENV_GANG_CONFIGMAP",
    "ENV_GANG_TOKEN_FILE",
    "ENV_POD_NAMESPACE",
    "TOKEN_FILE",
    "ApiAccess",
    "ApiGone",
    "Backoff",
    "GangSource",
    "GangWatch",
    "WatchEvent",
    "announcement_of",
    "api_access_from_env",
    "consume_events",
    "gang_source",
    "newest",
    "parse_watch_line",
]
