"""The promotion chain as pure planning: which children when, and what status.promotion says."""

from omnitrain.operator import plan
from omnitrain.operator.promotion import (
    PromotionOptions,
    plan_promotion,
    promotion_settled,
    render_distill_job,
    render_serving,
)
from omnitrain.spec import JobSpec
from omnitrain.status import JobStatus

JOB = plan.JobRef(name="video", namespace="team", uid="uid-1")
NOW = "2026-11-25T06:00:00Z"


def _spec(distill=True, inference=True, **inference_fields):
    promotion = {}
    if distill:
        promotion["distill"] = {"teacherSteps": 150, "studentSteps": 10}
    if inference:
        promotion["inference"] = {"port": 8081, **inference_fields}
    return JobSpec.model_validate(
        {"checkpoint": {"persistentClaim": "ckpt", "persistentPath": "/mnt/ck"}, "promotion": promotion}
    )


def _succeeded(promotion=None, **fields):
    return JobStatus(phase="Succeeded", completion_time="2026-11-25T05:59:00Z", promotion=promotion, **fields)


def _job_done(ok=True):
    t = "Complete" if ok else "Failed"
    return {
        "status": {"conditions": [{"type": t, "status": "True", "message": "BackoffLimitExceeded" if not ok else ""}]}
    }


def test_nothing_before_success_or_without_promotion():
    assert plan_promotion(JOB, _spec(), JobStatus(phase="Running"), None, None, NOW) is None
    assert plan_promotion(JOB, _spec(False, False), _succeeded(), None, None, NOW) is None


def test_full_chain_training_distillation_serving():
    spec = _spec()
    d = plan_promotion(JOB, spec, _succeeded(), None, None, NOW)
    assert [o["kind"] for o in d.create] == ["Job"]
    job = d.create[0]
    assert job["metadata"]["name"] == "video-distill"
    assert job["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    pod = job["spec"]["template"]["spec"]
    assert pod["containers"][0]["command"] == ["omnitrain", "distill", "--config", "/etc/omnitrain/config.yaml"]
    assert {"name": "checkpoints", "persistentVolumeClaim": {"claimName": "ckpt"}} in pod["volumes"]
    assert d.promotion.chain == "training:Succeeded -> distillation:Running -> serving:Pending"
    assert [e.reason for e in d.events] == ["DistillationStarted"]

    # While the Job runs: nothing new is created.
    running = plan_promotion(JOB, spec, _succeeded(d.promotion), {"status": {"active": 1}}, None, NOW)
    assert running.create == [] and running.promotion.distill.phase == "Running"

    done = plan_promotion(JOB, spec, _succeeded(running.promotion), _job_done(), None, NOW)
    kinds = [o["kind"] for o in done.create]
    assert kinds == ["Deployment", "Service"]
    deployment, service = done.create
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["command"][:4] == ["omnitrain", "serve", "--checkpoint", "/mnt/ck/video/promotion/student.pt"]
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": 8081}
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    assert all(o["metadata"]["ownerReferences"][0]["name"] == "video" for o in done.create)
    assert done.promotion.chain == "training:Succeeded -> distillation:Succeeded -> serving:Progressing"
    assert "http://video-serve.team.svc.cluster.local:8081" in done.promotion.inference.message
    assert not promotion_settled(spec, _succeeded(done.promotion))

    ready = plan_promotion(JOB, spec, _succeeded(done.promotion), _job_done(), {"status": {"readyReplicas": 1}}, NOW)
    assert ready.create == [] and ready.promotion.inference.phase == "Ready"
    assert [e.reason for e in ready.events] == ["ServingReady"]
    assert promotion_settled(spec, _succeeded(ready.promotion))


def test_failed_distillation_blocks_serving_and_is_not_retried():
    spec = _spec()
    first = plan_promotion(JOB, spec, _succeeded(), None, None, NOW)
    failed = plan_promotion(JOB, spec, _succeeded(first.promotion), _job_done(ok=False), None, NOW)
    assert failed.create == []
    assert failed.promotion.distill.phase == "Failed"
    assert failed.promotion.inference.phase == "Failed"
    # The Job object deleted later: still recorded as failed, nothing re-created.
    again = plan_promotion(JOB, spec, _succeeded(failed.promotion), None, None, NOW)
    assert again.create == [] and again.promotion.distill.phase == "Failed"
    assert promotion_settled(spec, _succeeded(again.promotion))


def test_inference_only_serves_the_final_checkpoint_folder():
    spec = _spec(distill=False, fp8=False)
    d = plan_promotion(JOB, spec, _succeeded(), None, None, NOW)
    deployment = d.create[0]
    command = deployment["spec"]["template"]["spec"]["containers"][0]["command"]
    assert command[command.index("--checkpoint") + 1] == "/mnt/ck/video"
    assert "--no-fp8" in command and "--config" in command
    assert d.promotion.chain == "training:Succeeded -> serving:Progressing"


def test_commands_come_from_the_operator_options():
    opts = PromotionOptions(
        distill_command=["python", "-m", "omnitrain", "distill", "--config", "/c.yaml"],
        serve_command=["python", "-m", "omnitrain", "serve"],
    )
    spec = _spec()
    assert render_distill_job(JOB, spec, opts)["spec"]["template"]["spec"]["containers"][0]["command"][:3] == [
        "python",
        "-m",
        "omnitrain",
    ]
    assert render_serving(JOB, spec, opts)[0]["spec"]["template"]["spec"]["containers"][0]["command"][:4] == [
        "python",
        "-m",
        "omnitrain",
        "serve",
    ]


def test_operator_side_imports_no_torch():
    import subprocess
    import sys

    code = "import sys, omnitrain.operator.promotion; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"


def test_promotion_pods_are_not_mistaken_for_the_training_gang():
    d = plan_promotion(JOB, _spec(), _succeeded(), None, None, NOW)
    labels = d.create[0]["spec"]["template"]["metadata"]["labels"]
    assert plan.LABEL_JOB not in labels and labels["omnitrain.io/promoted-from"] == "video"


def test_promotion_pods_share_the_training_pods_skeleton():
    spec = JobSpec.model_validate(
        {
            "checkpoint": {"persistentClaim": "ckpt", "persistentPath": "/mnt/ck"},
            "scheduling": {"schedulerName": "volcano", "nodeSelector": {"pool": "gpu"}},
            "promotion": {"distill": {}, "inference": {}},
        }
    )
    d = plan_promotion(JOB, spec, _succeeded(excluded_nodes=["gpu-3"]), None, None, NOW)
    pod = d.create[0]["spec"]["template"]["spec"]
    assert pod["schedulerName"] == "volcano" and pod["nodeSelector"] == {"pool": "gpu"}
    terms = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert terms[0]["matchExpressions"][0]["values"] == ["gpu-3"]  # kept off the isolated node
    training = plan.render_pod(JOB, spec, 0, 0, ["gpu-3"], plan.PlanOptions())["spec"]
    for key in ("schedulerName", "nodeSelector"):
        assert pod[key] == training[key]
    assert training["affinity"]["nodeAffinity"] == pod["affinity"]["nodeAffinity"]


def test_distillation_and_inference_pods_get_no_service_account_token():
    spec, opts = _spec(), PromotionOptions()
    distill = render_distill_job(JOB, spec, opts)["spec"]["template"]["spec"]
    deployment = next(o for o in render_serving(JOB, spec, opts) if o["kind"] == "Deployment")
    assert distill["automountServiceAccountToken"] is False
    assert deployment["spec"]["template"]["spec"]["automountServiceAccountToken"] is False
