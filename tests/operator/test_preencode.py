"""spec.data.preEncode: the pre-encoding Job gates the first launch (pure reconcile steps), renders as a batch Job
of the job's image with the encoders on its command line, and bad specs are refused naming the field."""

import json

from omnitrain.operator import plan
from omnitrain.operator.preencode import encode_job_name, encode_job_phase, render_encode_job
from omnitrain.operator.reconcile import FAILED, PENDING, parse_spec, reconcile
from omnitrain.spec import JobSpec, validate_job_spec

JOB = plan.JobRef(name="j", namespace="ns", uid="uid-1")
SPEC = {
    "parallelism": {"nodes": 2, "gpusPerNode": 1},
    "data": {
        "path": "/mnt/ckpt/raw",
        "encoders": {"buckets": {"area": 1024, "maxFrames": 9}},
        "preEncode": {"path": "/mnt/ckpt/encoded"},
    },
    "model": {"textDim": 384},
    "checkpoint": {"persistentClaim": "c", "persistentPath": "/mnt/ckpt"},
}


def step(status, encoding, spec=SPEC, now="t"):
    return reconcile(JOB, parse_spec(spec), status, [], now, generation=1, encoding=encoding)


def test_the_first_pass_creates_the_encoding_job_and_no_pod():
    d = step(None, None)
    assert d.create_encode_job and d.create_attempt is None
    assert d.status.phase == PENDING and d.status.launched_attempt is None
    encoded = d.status.condition("DataEncoded")
    assert (encoded.status, encoded.reason) == ("False", "Encoding")
    assert "/mnt/ckpt/raw -> /mnt/ckpt/encoded" in encoded.message
    assert [e.reason for e in d.events] == ["EncodingStarted"] and d.requeue_after_seconds


def test_while_it_runs_nothing_is_created_and_once_it_succeeded_the_gang_launches_in_that_pass():
    first = step(None, None)
    running = step(first.status, ("Running", "encoding"))
    assert not running.create_encode_job and running.create_attempt is None and not running.events
    done = step(running.status, ("Succeeded", "dataset encoded"))
    assert done.create_attempt == 0 and not done.create_encode_job
    assert done.status.condition("DataEncoded").status == "True"
    assert [e.reason for e in done.events] == ["DataEncoded", "Created"]
    # later passes (and restarts) do not look at it again, even once the Job object is gone
    later = step(done.status, None)
    assert not later.create_encode_job and later.status.condition("DataEncoded").status == "True"


def test_a_failed_encoding_fails_the_job_naming_the_job():
    first = step(None, None)
    d = step(first.status, ("Failed", "BackoffLimitExceeded"))
    assert d.status.phase == FAILED and d.create_attempt is None
    assert d.status.condition("Failed").reason == "EncodeFailed"
    assert "job j-encode" in d.status.message and "BackoffLimitExceeded" in d.status.message
    assert [e.type for e in d.events] == ["Warning"]


def test_a_job_without_pre_encoding_launches_at_once():
    spec = {k: v for k, v in SPEC.items() if k != "data"}
    d = step(None, None, spec)
    assert d.create_attempt == 0 and not d.create_encode_job and d.status.condition("DataEncoded") is None


def test_the_job_runs_data_encode_with_the_encoders_on_its_command_line():
    spec = JobSpec.model_validate(SPEC)
    job = render_encode_job(JOB, spec, ["python", "-m", "omnitrain", "data", "encode"])
    assert job["kind"] == "Job" and job["metadata"]["name"] == encode_job_name("j") == "j-encode"
    assert job["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    pod = job["spec"]["template"]["spec"]
    command = pod["containers"][0]["command"]
    assert command[:6] == ["python", "-m", "omnitrain", "data", "encode", "/mnt/ckpt/raw"]
    assert command[command.index("--out") + 1] == "/mnt/ckpt/encoded" and command[-1] == "--reuse"
    assert json.loads(command[command.index("--encoders-json") + 1]) == spec.data.encoders.to_wire()
    assert {v["name"] for v in pod["volumes"]} == {plan.PERSISTENT_VOLUME}  # no ConfigMap before the launch
    assert pod["restartPolicy"] == "Never"


def test_phases_of_the_job_object():
    assert encode_job_phase({"status": {"active": 1}})[0] == "Running"
    assert encode_job_phase({"status": {"conditions": [{"type": "Complete", "status": "True"}]}})[0] == "Succeeded"
    failed = {"status": {"conditions": [{"type": "Failed", "status": "True", "message": "BackoffLimitExceeded"}]}}
    assert encode_job_phase(failed) == ("Failed", "BackoffLimitExceeded")


def test_specs_that_cannot_pre_encode_are_refused_naming_the_field():
    def problems(**data):
        spec = {**SPEC, "data": {**SPEC["data"], **data}}
        return {e.field for e in validate_job_spec(JobSpec.model_validate(spec)) if "preEncode" in e.field}

    assert problems() == set()
    assert problems(encoders=None) == {"spec.data.preEncode"}
    assert problems(preEncode={"path": "/mnt/ckpt/raw"}) == {"spec.data.preEncode.path"}
    assert problems(preEncode={"path": "/elsewhere/encoded"}) == {"spec.data.preEncode.path"}
    no_claim = {**SPEC, "checkpoint": {"persistentPath": "/mnt/ckpt"}}
    assert {e.field for e in validate_job_spec(JobSpec.model_validate(no_claim))} >= {"spec.data.preEncode.path"}
