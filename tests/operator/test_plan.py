"""The children of one attempt: names, ranks, env, resources, volumes, affinity, owner references."""

import re

import yaml

from omnitrain import contract
from omnitrain.operator import plan
from omnitrain.operator.promotion import PromotionOptions, render_distill_job, render_serving
from omnitrain.spec import JobSpec, TrainerConfig

JOB = plan.JobRef(name="video-dit", namespace="research", uid="0d9a3c1e-1111-2222-3333-444455556666")


def _spec(**over) -> JobSpec:
    base = {
        "parallelism": {"nodes": 3, "gpusPerNode": 4},
        "checkpoint": {"localPath": "/mnt/nvme/ck", "persistentClaim": "ckpt-pvc"},
        "scheduling": {
            "nodeSelector": {"pool": "gpu"},
            "queueName": "team-a",
            "priorityClassName": "high",
            "schedulerName": "volcano",
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        },
        "resources": {"cpu": "8", "memory": "64Gi"},
    }
    base.update(over)
    return JobSpec.model_validate(base)


def _env(pod):
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in pod["spec"]["containers"][0]["env"]}


def test_one_pod_per_node_with_ranks_and_rendezvous_env():
    children = plan.plan_children(JOB, _spec(), attempt=2)
    kinds = [c["kind"] for c in children]
    assert kinds == ["ConfigMap", "Service", "Pod", "Pod", "Pod"]
    pods = children[2:]
    assert [p["metadata"]["name"] for p in pods] == ["video-dit-a2-n0", "video-dit-a2-n1", "video-dit-a2-n2"]
    port = plan.master_port(JOB.uid)
    for rank, pod in enumerate(pods):
        env = _env(pod)
        assert env["PET_NNODES"] == "3" and env["PET_NODE_RANK"] == str(rank) and env["PET_NPROC_PER_NODE"] == "4"
        assert env["WORLD_SIZE"] == "12"
        assert env["MASTER_ADDR"] == "n0.video-dit.research.svc.cluster.local"
        assert env["MASTER_PORT"] == str(port)
        assert env[contract.ENV_ATTEMPT] == "2" and env[contract.ENV_JOB_NAME] == "video-dit"
        assert env[contract.ENV_POD_IP] == {"fieldRef": {"fieldPath": "status.podIP"}}
        assert env[contract.ENV_NODE_NAME] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
        labels = pod["metadata"]["labels"]
        assert labels[plan.LABEL_NODE_RANK] == str(rank) and labels[plan.LABEL_ATTEMPT] == "2"
        assert labels[plan.LABEL_QUEUE] == "team-a" and labels[plan.LABEL_JOB] == "video-dit"
        # one Kueue pod group per attempt, of the gang's size: admitted all or nothing
        assert labels[plan.LABEL_POD_GROUP] == "video-dit-a2"
        assert pod["metadata"]["annotations"] == {
            plan.ANNOTATION_POD_GROUP_COUNT: "3",
            plan.ANNOTATION_RETRIABLE_IN_GROUP: "false",
        }
        assert pod["spec"]["hostname"] == f"n{rank}" and pod["spec"]["subdomain"] == "video-dit"
        assert pod["spec"]["restartPolicy"] == "Never"


def test_master_port_differs_between_jobs_and_is_stable():
    other = plan.master_port("another-uid")
    assert plan.master_port(JOB.uid) == plan.master_port(JOB.uid)
    assert other != plan.master_port(JOB.uid)
    assert all(
        plan.MASTER_PORT_BASE <= plan.master_port(f"u{i}") < plan.MASTER_PORT_BASE + plan.MASTER_PORT_SPAN
        for i in range(100)
    )


def test_resources_scheduling_and_volumes():
    pod = plan.plan_children(JOB, _spec(scheduling={"gpuResource": "amd.com/gpu"}), 0)[2]
    container = pod["spec"]["containers"][0]
    assert container["resources"]["limits"]["amd.com/gpu"] == "4"
    assert container["resources"]["requests"] == {"amd.com/gpu": "4", "cpu": "8", "memory": "64Gi"}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert mounts == {
        contract.CONFIG_MOUNT: "config",
        "/mnt/nvme/ck": "local-checkpoints",
        "/mnt/checkpoints": "checkpoints",
    }
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert volumes["config"]["configMap"]["name"] == "video-dit-config"
    assert volumes["local-checkpoints"]["hostPath"]["path"] == "/mnt/nvme/ck"
    assert volumes["checkpoints"]["persistentVolumeClaim"]["claimName"] == "ckpt-pvc"

    pod = plan.plan_children(JOB, _spec(), 0)[2]
    s = pod["spec"]
    assert s["nodeSelector"] == {"pool": "gpu"} and s["priorityClassName"] == "high"
    assert s["schedulerName"] == "volcano"
    assert s["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]


def test_no_persistent_volume_without_a_claim():
    pod = plan.plan_children(JOB, JobSpec(), 0)[2]
    assert [v["name"] for v in pod["spec"]["volumes"]] == ["config", "local-checkpoints"]


def test_affinity_spreads_one_pod_per_node_and_excludes_isolated_nodes():
    pod = plan.plan_children(JOB, _spec(), 1, excluded_nodes=["gpu-7", "gpu-2", "gpu-7"])[2]
    aff = pod["spec"]["affinity"]
    anti = aff["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][0]
    assert anti["topologyKey"] == "kubernetes.io/hostname"
    assert anti["labelSelector"]["matchLabels"] == {plan.LABEL_JOB: "video-dit"}
    term = aff["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"][0]
    assert term["matchExpressions"] == [
        {"key": "kubernetes.io/hostname", "operator": "NotIn", "values": ["gpu-2", "gpu-7"]}
    ]
    assert (
        aff["podAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"][0]["podAffinityTerm"]["topologyKey"]
        == plan.RACK_LABEL
    )
    assert "nodeAffinity" not in plan.plan_children(JOB, _spec(), 1)[2]["spec"]["affinity"]


def test_service_config_map_and_owner_references():
    cm, svc, *pods = plan.plan_children(JOB, _spec(), 4)
    assert svc["spec"]["clusterIP"] == "None" and svc["spec"]["publishNotReadyAddresses"] is True
    assert svc["spec"]["selector"] == {plan.LABEL_JOB: "video-dit"}
    config = TrainerConfig.model_validate(yaml.safe_load(cm["data"][contract.CONFIG_FILE]))
    assert config.run.job_name == "video-dit" and config.run.attempt == 4 and config.run.job_uid == JOB.uid
    assert config.spec == _spec()
    for obj in [cm, svc, *pods]:
        (owner,) = obj["metadata"]["ownerReferences"]
        assert owner == {
            "apiVersion": "omnitrain.io/v1alpha1",
            "kind": "OmniTrainingJob",
            "name": "video-dit",
            "uid": JOB.uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }


def test_command_is_torchrun_by_default_and_configurable():
    pod = plan.plan_children(JOB, _spec(), 0)[2]
    command = pod["spec"]["containers"][0]["command"]
    assert command[0] == "torchrun"
    assert command[-5:] == ["-m", "omnitrain", "train", "--config", contract.CONFIG_PATH]
    assert "--nnodes=$(PET_NNODES)" in command and "-m" in command
    custom = plan.plan_children(JOB, _spec(), 0, options=plan.PlanOptions(command=["python", "-c", "pass"]))[2]
    assert custom["spec"]["containers"][0]["command"] == ["python", "-c", "pass"]


def test_long_names_stay_within_63_characters_and_unique():
    long_a = "a" * 62 + "x"
    long_b = "a" * 62 + "y"
    names = set()
    for name in (long_a, long_b):
        job = plan.JobRef(name=name, namespace="ns", uid="u")
        cm, svc, *pods = plan.plan_children(job, JobSpec.model_validate({"parallelism": {"nodes": 12}}), 1234)
        for obj in [cm, svc, *pods]:
            assert len(obj["metadata"]["name"]) <= 63
            for value in obj["metadata"]["labels"].values():
                assert len(value) <= 63
            names.add(obj["metadata"]["name"])
        assert len(pods[0]["spec"]["hostname"]) <= 63
    assert len(names) == 2 * 14


LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")  # apimachinery's validation


def _label_maps(obj, found=None) -> list[dict]:
    """Every labels / matchLabels / selector map anywhere in an object (template labels, affinity terms, ...)."""
    found = [] if found is None else found
    if isinstance(obj, dict):
        for key, value in obj.items():
            if key in ("labels", "matchLabels") or (key == "selector" and "matchLabels" not in value):
                found.append(value)
            _label_maps(value, found)
    elif isinstance(obj, list):
        for item in obj:
            _label_maps(item, found)
    return found


def test_a_253_character_job_name_gets_valid_labels_and_selectors_that_match():
    """Issue 14, case 2: a job name may be 253 characters, a label value only 63. Every label value the operator
    writes (pods, Service, ConfigMap, promotion's Job and Deployment) is cut and hashed like object names, and
    every selector it uses (the pod list, the Service, affinity, serving) selects exactly those pods."""
    name = "v" * 120 + "." + "w" * 132
    assert len(name) == 253
    job = plan.JobRef(name=name, namespace="ns", uid="u")
    spec = JobSpec.model_validate(
        {
            "parallelism": {"nodes": 2},
            "checkpoint": {"persistentClaim": "ckpt", "persistentPath": "/mnt/ck"},
            "promotion": {"distill": {"teacherSteps": 150, "studentSteps": 10}, "inference": {"port": 8081}},
        }
    )
    cm, svc, *pods = plan.plan_children(job, spec, 3)
    distill = render_distill_job(job, spec, PromotionOptions())
    serving = render_serving(job, spec, PromotionOptions())
    for obj in [cm, svc, *pods, distill, *serving]:
        assert len(obj["metadata"]["name"]) <= 63
        for labels in _label_maps(obj):
            for value in labels.values():
                assert len(value) <= 63 and LABEL_VALUE.match(value), (obj["kind"], value)
    key, value = plan.job_selector(name).split("=")
    assert all(p["metadata"]["labels"][key] == value for p in pods)
    assert svc["spec"]["selector"] == {key: value}
    anti = pods[0]["spec"]["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][0]
    assert anti["labelSelector"]["matchLabels"] == {key: value}
    other = plan.plan_children(plan.JobRef(name=name[:-1] + "x", namespace="ns", uid="u"), spec, 3)[2]
    assert other["metadata"]["labels"][key] != value  # two long names that share a prefix stay apart
    deployment, service = serving[0], serving[1]
    assert service["spec"]["selector"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()


def test_no_pod_of_a_job_gets_a_service_account_token():
    # The pods run the user's image and never call the API: a mounted token would be the namespace's credentials.
    spec = _spec()
    pods = [c for c in plan.plan_children(JOB, spec, attempt=0) if c["kind"] == "Pod"]
    assert pods and all(p["spec"]["automountServiceAccountToken"] is False for p in pods)


def test_without_a_queue_the_pods_join_no_group():
    spec = _spec(scheduling={"nodeSelector": {"pool": "gpu"}})
    for pod in plan.plan_children(JOB, spec, attempt=0)[2:]:
        assert plan.LABEL_POD_GROUP not in pod["metadata"]["labels"] and "annotations" not in pod["metadata"]


def test_a_long_job_name_still_gives_a_pod_group_label_value():
    group = plan.pod_group_name("j" * 63, 12)
    assert len(group) <= 63 and group.endswith("-a12")
