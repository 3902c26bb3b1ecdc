"""kwok against the local API server: simulated GPU nodes for launch-scale benchmarks.

kwok manages only nodes annotated kwok.x-k8s.io/node=fake. Its default pod stages mark Job-owned Running pods
Succeeded at once (shared/k8s-notes.md); our stage set has no completion stage, so a fake pod stays Running until
it is deleted, like a long training run.

Node heartbeats: kwok v0.7.0 started without --node-lease-duration-seconds renews no Lease at all (kube-node-lease
stays empty), and its default node stages then post the Node's status only every 10-20 minutes (root.go picks the
stage set with `lease = duration == 0`, the wrong way round). The node lifecycle controller then sees no heartbeat
for --node-monitor-grace-period (50 s), marks every kwok node Ready=Unknown, kwok's initialize stage sets it Ready
again, and so on every 50 s: in a 512-node measurement the operator saw the flaps and restarted a healthy job.
So every kwok we start gets NODE_LEASE_ARGS (Leases renewed every 10 s, as a kubelet does), and enough Lease
workers (KWOK_CONFIGURATION) that 1,000 renewals every 10 s keep up on a loaded machine (kwok's default is 4).
"""

from __future__ import annotations

from pathlib import Path

# Our own stage set (kwok replaces its defaults with whatever Pod stages the config names): ready, then delete.
POD_STAGES = """\
apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata:
  name: omnitrain-pod-running
spec:
  resourceRef: {apiGroup: v1, kind: Pod}
  selector:
    matchExpressions:
    - {key: .metadata.deletionTimestamp, operator: DoesNotExist}
    - {key: .status.podIP, operator: DoesNotExist}
  next:
    statusTemplate: |
      {{ $now := Now }}
      conditions:
      - {type: Initialized, status: "True", lastTransitionTime: {{ $now | Quote }}}
      - {type: Ready, status: "True", lastTransitionTime: {{ $now | Quote }}}
      - {type: ContainersReady, status: "True", lastTransitionTime: {{ $now | Quote }}}
      containerStatuses:
      {{ range .spec.containers }}
      - name: {{ .name | Quote }}
        image: {{ .image | Quote }}
        ready: true
        restartCount: 0
        started: true
        state:
          running:
            startedAt: {{ $now | Quote }}
      {{ end }}
      hostIP: {{ NodeIPWith .spec.nodeName | Quote }}
      podIP: {{ PodIPWith .spec.nodeName ( or .spec.hostNetwork false ) ( or .metadata.uid "" ) ( or .metadata.name "" ) ( or .metadata.namespace "" ) | Quote }}
      phase: Running
      startTime: {{ $now | Quote }}
---
apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata:
  name: omnitrain-pod-delete
spec:
  resourceRef: {apiGroup: v1, kind: Pod}
  selector:
    matchExpressions:
    - {key: .metadata.deletionTimestamp, operator: Exists}
  next:
    finalizers: {empty: true}
    delete: true
"""


NODE_LEASE_SECONDS = 40  # a kubelet's default; kwok renews every quarter of it
NODE_LEASE_ARGS = (f"--node-lease-duration-seconds={NODE_LEASE_SECONDS}",)
NODE_LEASE_WORKERS = 32

KWOK_CONFIGURATION = f"""\
apiVersion: config.kwok.x-k8s.io/v1alpha1
kind: KwokConfiguration
options:
  nodeLeaseParallelism: {NODE_LEASE_WORKERS}
"""


def write_config(folder: Path, pod_stages: bool = True) -> Path:
    """kwok's --config: its options (KWOK_CONFIGURATION) and, with `pod_stages`, our pod stage set (else kwok's
    default stages)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / ("kwok-stages.yaml" if pod_stages else "kwok.yaml")
    path.write_text(KWOK_CONFIGURATION + ("---\n" + POD_STAGES if pod_stages else ""))
    return path


def kwok_argv(bin_dir: Path, kubeconfig: Path, config: Path, node_port: int, server_port: int) -> list[str]:
    return [
        str(bin_dir / "kwok"),
        f"--kubeconfig={kubeconfig}",
        f"--config={config}",
        "--manage-all-nodes=false",
        "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
        *NODE_LEASE_ARGS,
        "--v=WARN",
        "--cidr=10.244.0.1/16",
        f"--node-port={node_port}",
        f"--server-address=127.0.0.1:{server_port}",
    ]
