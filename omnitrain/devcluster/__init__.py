"""A real local Kubernetes cluster for development and end-to-end tests.

`omnitrain dev up` (or `LocalCluster(root).up(...)`) starts, on 127.0.0.1 only: etcd, kube-apiserver (own CA,
client certificates, Node,RBAC authorization), kube-controller-manager (all non-cloud controllers: garbage
collector, job, node lifecycle, pod GC, service accounts), kube-scheduler, and the local node agent
(omnitrain.devcluster.agent, whose docstring lists its modules) that registers Nodes `local-node-<i>` with
`nvidia.com/gpu` capacity and really runs the pods bound to them as process groups. Optionally kwok with fake
8-GPU nodes (`kwok-node-<i>`).

Interface used by other areas' tests (stable):

- pytest fixture `local_cluster` (tests/conftest.py, session scope) yields a `LocalCluster` with
  `.kubeconfig` (Path), `.root` (cluster folder), `.node_names` (agent-run nodes), `.node_dir(node)` (where
  hostPath volumes of that node live: `<root>/nodes/<node>/<hostPath path>`), `.pv_dir(claim)` (`<root>/pv/<claim>`,
  what a persistentVolumeClaim volume maps to), `.pod_dir(namespace, name)` (per-pod folder: container logs
  `<container>.log`, emptyDir/configMap volumes), `.container_log(namespace, name, container)`,
  `.api_client()` (a configured kubernetes ApiClient), `.add_node(name)`, `.delete_node(name)`,
  `.start_kwok(count) -> [node names]` (fake nodes, annotation kwok.x-k8s.io/node=fake, taint
  kwok.x-k8s.io/node=fake:NoSchedule; pods there go Running and stay Running until deleted),
  `.ensure_persistent_claim(namespace, claim)` (creates a claim, waits for Bound, returns `.pv_dir(claim)`).
- Storage: the default StorageClass `omnitrain-local`, provisioned by the agent (omnitrain.devcluster.provisioner):
  any claim of it, or without a class, gets a hostPath PV on `.pv_dir(claim)`; a PVC applied with kubectl ends Bound.
- omnitrain.devcluster.testing: `wait_for(predicate, timeout, what)`, `wait_pod_phase`, `wait_pod_gone`.

Pods on agent nodes: image ignored, command+args run with the repo's venv first on PATH; each pod gets its own
loopback IP (127.a.b.c) as status.podIP; `<host>.<subdomain>.<ns>.svc[.cluster.local]` in env values/args become
that pod's IP; volumes are bind-mounted at their mountPath in a private mount namespace (fallback without
`unshare`: mountPath prefixes in env/args/workingDir are rewritten and OMNITRAIN_PATH_MAP lists the mapping);
the termination message comes from the file in $OMNITRAIN_TERMINATION_LOG (also bound at terminationMessagePath).
Restart back-off is 1 s doubling to 30 s (shorter than the kubelet's 10 s..5 min, for tests). `kubectl logs [-f]`
reaches the agent's kubelet endpoint (kubelet.py). Not supported: init containers, resource limits, image pulls,
Services' cluster IPs (use headless Services + pod DNS names), Endpoints/EndpointSlices (the API refuses loopback
addresses: their controllers are off, docs/operator.md "The local cluster").
"""
