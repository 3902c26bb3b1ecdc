"""The checkpoint paths a job's pods mount (issue 14, case 5): `checkpoint.localPath: "/"` gave the user's image the
node's root filesystem through an operator with cluster-wide pod rights. Paths are absolute and normalised, never a
system folder (nor inside or above one), and a hostPath lies below a root the operator's admin allows."""

import posixpath

import pytest
from hypothesis import given
from hypothesis import strategies as st

from omnitrain.cli import main
from omnitrain.operator import plan
from omnitrain.operator.reconcile import parse_spec, reconcile
from omnitrain.operator.settings import OperatorSettings, allowed_host_roots
from omnitrain.spec import DEFAULT_ALLOWED_HOST_ROOTS, SYSTEM_FOLDERS, CheckpointSpec, host_path_problems, path_problem

JOB = plan.JobRef(name="video", namespace="team", uid="uid-1")
ROOTS = list(DEFAULT_ALLOWED_HOST_ROOTS)


def _problems(roots=ROOTS, **checkpoint) -> list[str]:
    return [str(e) for e in host_path_problems(CheckpointSpec.model_validate(checkpoint), roots)]


@pytest.mark.parametrize(
    ("path", "words"),
    [
        ("/", "contains the system folder"),
        ("/etc", "is the system folder /etc"),
        ("/etc/omnitrain", "inside the system folder /etc"),  # the config mount: a second mount there breaks it
        ("/proc/1", "inside the system folder /proc"),
        ("/sys", "system folder /sys"),
        ("/dev/shm", "inside the system folder /dev"),
        ("/boot", "system folder /boot"),
        ("/root/.ssh", "inside the system folder /root"),
        ("/var/run", "system folder /var/run"),
        ("/run/containerd", "inside the system folder /run"),
        ("/var/lib/kubelet/pods", "inside the system folder /var/lib/kubelet"),
        ("/var", "contains the system folder /var/lib/containerd"),
        ("/usr/local/lib", "inside the system folder /usr"),
        ("/bin", "system folder /bin"),
        ("/lib64", "system folder /lib64"),
        ("relative/ck", "is not absolute"),
        ("", "is not absolute"),
        ("/mnt/../etc", "not normalised"),
        ("/mnt//nvme", "not normalised"),
        ("//mnt/nvme", "not normalised"),
        ("/mnt/nvme/", "not normalised"),
        ("/mnt/./nvme", "not normalised"),
        ("/mnt/nvme ", "has characters other than"),
        ("/mnt/nv me", "has characters other than"),
        ("/mnt/nvme\n", "has characters other than"),
        ("/mnt/a:b", "has characters other than"),
    ],
)
def test_refused_paths_name_the_problem(path, words):
    problem = path_problem(path)
    assert problem is not None and words in problem
    local = _problems(localPath=path)
    assert len(local) == 1 and local[0].startswith("spec.checkpoint.localPath: ") and words in local[0]
    persistent = _problems(persistentClaim="ck", persistentPath=path)
    assert any(p.startswith("spec.checkpoint.persistentPath: ") and words in p for p in persistent)


@pytest.mark.parametrize("path", ["/mnt/nvme/omnitrain", "/mnt", "/var/lib/omnitrain/quickstart", "/mnt/a.b/c-d_e"])
def test_accepted_paths(path):
    assert path_problem(path) is None
    assert _problems(localPath=path) == []


def test_the_defaults_and_the_examples_paths_pass():
    assert _problems() == []  # the schema's defaults: /mnt/nvme/omnitrain, /mnt/checkpoints
    assert _problems(localPath="/var/lib/omnitrain/quickstart", persistentClaim="c", persistentPath="/mnt/ck") == []


def test_a_hostpath_outside_the_allowed_roots_is_refused_naming_the_setting():
    (problem,) = _problems(localPath="/srv/ck")
    assert problem.startswith("spec.checkpoint.localPath: '/srv/ck' is outside")
    assert "/mnt, /var/lib/omnitrain" in problem and "OMNITRAIN_ALLOWED_HOST_ROOTS" in problem
    # by whole segments: /var/lib/omnitrain-x is not below /var/lib/omnitrain
    assert _problems(localPath="/var/lib/omnitrain-e2e") and _problems(localPath="/mntx/ck")
    assert _problems(roots=["/srv"], localPath="/srv/ck") == []
    assert _problems(roots=None, localPath="/srv/ck") == []  # the trainer mounts nothing: no root check there


def test_the_persistent_path_is_a_mount_target_only_so_no_root_applies_but_it_must_not_overlap_the_local_one():
    assert _problems(persistentClaim="c", persistentPath="/data/ck") == []
    (problem,) = _problems(localPath="/mnt/nvme", persistentClaim="c", persistentPath="/mnt/nvme/pv")
    assert problem.startswith("spec.checkpoint.persistentPath: ") and "overlap" in problem
    assert _problems(localPath="/mnt/nvme", persistentClaim="c", persistentPath="/mnt/nvme")
    # without a claim the persistent path is not mounted
    assert _problems(persistentPath="/etc") == []


def test_the_operator_fails_a_job_whose_local_path_is_the_root_and_creates_nothing():
    checked = parse_spec({"checkpoint": {"localPath": "/"}}, allowed_host_roots=ROOTS)
    assert checked.spec is not None and checked.problems
    decision = reconcile(JOB, checked, None, [], "2026-12-01T00:00:00Z")
    assert decision.status.phase == "Failed" and decision.create_attempt is None
    valid = decision.status.condition("Valid")
    assert valid is not None and valid.reason == "InvalidSpec" and "spec.checkpoint.localPath" in valid.message


def test_settings_read_the_allowed_roots_and_refuse_bad_ones():
    assert OperatorSettings.from_env({}).allowed_host_roots == ROOTS
    env = {"OMNITRAIN_ALLOWED_HOST_ROOTS": "/srv/nvme, /data"}
    assert OperatorSettings.from_env(env).allowed_host_roots == ["/srv/nvme", "/data"]
    assert allowed_host_roots({"OMNITRAIN_ALLOWED_HOST_ROOTS": ""}) == []  # nothing may be mounted from the node
    for bad in ("/", "/etc", "relative", "/mnt/../etc"):
        with pytest.raises(ValueError, match="OMNITRAIN_ALLOWED_HOST_ROOTS"):
            allowed_host_roots({"OMNITRAIN_ALLOWED_HOST_ROOTS": bad})


def test_validate_runs_the_same_checks_with_the_option_or_the_variable(tmp_path, capsys, monkeypatch):
    f = tmp_path / "job.yaml"
    f.write_text("kind: OmniTrainingJob\nmetadata: {name: j}\nspec:\n  checkpoint: {localPath: /srv/ck}\n")
    monkeypatch.delenv("OMNITRAIN_ALLOWED_HOST_ROOTS", raising=False)
    assert main(["validate", str(f)]) == 1
    assert "spec.checkpoint.localPath: '/srv/ck' is outside" in capsys.readouterr().err
    assert main(["validate", "--allowed-host-root", "/srv", str(f)]) == 0
    monkeypatch.setenv("OMNITRAIN_ALLOWED_HOST_ROOTS", "/srv")
    assert main(["validate", str(f)]) == 0
    f.write_text("spec:\n  checkpoint: {localPath: /}\n")
    assert main(["validate", "--allowed-host-root", "/srv", str(f)]) == 1
    assert "system folder" in capsys.readouterr().err
    # a root the operator would not start with is refused here too, in one line
    assert main(["validate", "--allowed-host-root", "/", str(f)]) == 2
    assert "--allowed-host-root: '/' contains the system folder" in capsys.readouterr().err
    monkeypatch.setenv("OMNITRAIN_ALLOWED_HOST_ROOTS", "/etc")
    assert main(["validate", str(f)]) == 2
    assert "OMNITRAIN_ALLOWED_HOST_ROOTS: '/etc' is the system folder /etc" in capsys.readouterr().err


_SEGMENT = st.sampled_from(["", ".", "..", "mnt", "etc", "var", "lib", "kubelet", "run", "omnitrain", "nvme", "x y"])


@given(st.lists(_SEGMENT, max_size=6), st.booleans(), st.booleans())
def test_any_accepted_path_is_normal_and_away_from_every_system_folder(segments, absolute, trailing):
    path = ("/" if absolute else "") + "/".join(segments) + ("/" if trailing else "")
    if path_problem(path) is not None:
        return
    assert posixpath.normpath(path) == path and path.startswith("/") and not path.startswith("//")
    for folder in SYSTEM_FOLDERS:
        assert not path.startswith(folder + "/") and path != folder and not folder.startswith(path.rstrip("/") + "/")


def test_the_operator_does_not_start_with_a_bad_root_and_says_why(monkeypatch, caplog):
    from omnitrain.operator.run import run_operator

    monkeypatch.setenv("OMNITRAIN_ALLOWED_HOST_ROOTS", "/mnt,/")
    assert run_operator() == 2
    assert "OMNITRAIN_ALLOWED_HOST_ROOTS: '/' contains the system folder" in caplog.text
