"""`make demo`: the whole loop on this machine, end to end.

Starts the local cluster (.dev/cluster), installs the CRD, runs the operator, applies examples/quickstart.yaml
(a tiny DiT on 2 nodes x 2 CPU "GPUs", trained on real MP4 clips of coloured shapes through the online VAE and text
encoder), prints progress until the job ends, then the status view and a report; then follows the promotion
(distillation, the FP8 inference Deployment), asks the served model for a clip from a prompt and saves it as
.dev/demo/demo.mp4 with a contact sheet of its frames. The cluster stays up afterwards for kubectl (the export line
is printed); `make clean` stops it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
JOB = "quickstart"
NAMESPACE = "default"
CLAIM = "quickstart-checkpoints"
LOCAL_PATH = "/var/lib/omnitrain/quickstart"  # spec.checkpoint.localPath in examples/quickstart.yaml
TIMEOUT_S = float(os.environ.get("OMNITRAIN_DEMO_TIMEOUT", "1200"))
PROMPT = "a red circle moving right"
OUT = REPO / ".dev" / "demo"


def log(msg: str) -> None:
    print(f"[demo {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def kubectl(kubeconfig: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    from omnitrain.devcluster.binaries import bin_dir

    done = subprocess.run(
        [str(bin_dir() / "kubectl"), f"--kubeconfig={kubeconfig}", *args], text=True, capture_output=True
    )
    if check and done.returncode:
        raise SystemExit(f"kubectl {' '.join(args)} failed ({done.returncode}):\n{done.stderr}")
    return done


def install_crd(kubeconfig: Path) -> None:
    kubectl(
        kubeconfig,
        "apply",
        "--server-side",
        "--force-conflicts",
        "-f",
        str(REPO / "manifests" / "crd" / "omnitrainingjobs.yaml"),
    )
    kubectl(kubeconfig, "wait", "--for=condition=Established", "--timeout=60s", "crd/omnitrainingjobs.omnitrain.io")
    log("CRD omnitrainingjobs.omnitrain.io installed")


def start_operator(kubeconfig: Path, logfile: Path) -> subprocess.Popen:
    env = {**os.environ, "KUBECONFIG": str(kubeconfig)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "omnitrain", "operator"],
        env=env,
        stdout=open(logfile, "w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    log(f"operator started (pid {proc.pid}, log {logfile})")
    return proc


def remove_previous_run(cluster, kubeconfig: Path) -> None:
    """A second `make demo` starts the job afresh: without the old job, and without its checkpoints and metrics log
    (a job of the same name would otherwise resume from the old final checkpoint and stop at once)."""
    import shutil

    done = kubectl(
        kubeconfig,
        "delete",
        "otj",
        JOB,
        "-n",
        NAMESPACE,
        "--ignore-not-found",
        "--wait=true",
        "--timeout=120s",
        check=False,
    )
    if "deleted" in done.stdout:
        for selector in (f"omnitrain.io/job-name={JOB}", f"omnitrain.io/promoted-from={JOB}"):
            kubectl(
                kubeconfig,
                "wait",
                "--for=delete",
                "pod",
                "-l",
                selector,
                "-n",
                NAMESPACE,
                "--timeout=120s",
                check=False,
            )
    leftovers = [cluster.pv_dir(CLAIM) / JOB] + [
        cluster.node_dir(n) / LOCAL_PATH.lstrip("/") for n in cluster.node_names
    ]
    for folder in leftovers:
        if folder.exists():
            shutil.rmtree(folder)
    if "deleted" in done.stdout:
        log("removed the previous quickstart run, its checkpoints and its metrics log")


def read_job(kubeconfig: Path) -> dict:
    import json

    out = kubectl(kubeconfig, "get", "otj", JOB, "-n", NAMESPACE, "-o", "json", check=False)
    return json.loads(out.stdout) if out.returncode == 0 else {}


def watch(kubeconfig: Path, operator: subprocess.Popen) -> str:
    started = time.monotonic()
    last_line = ""
    while time.monotonic() - started < TIMEOUT_S:
        if operator.poll() is not None:
            raise SystemExit(f"the operator exited with {operator.returncode}; see .dev/operator.log")
        status = read_job(kubeconfig).get("status", {})
        phase = status.get("phase", "Pending")
        ckpt = (status.get("lastCheckpoint") or {}).get("step", "-")
        line = (
            f"phase={phase} attempt={status.get('attempt', 0)} restarts={status.get('restarts', 0)} "
            f"step={status.get('currentStep', 0)}/{status.get('totalSteps', '?')} checkpoint={ckpt}"
        )
        if line != last_line:
            log(f"{time.monotonic() - started:6.1f}s  {line}")
            last_line = line
        if phase in ("Succeeded", "Failed"):
            return phase
        time.sleep(1.0)  # a progress display polling the API server, not synchronisation
    raise SystemExit(f"the job did not finish within {TIMEOUT_S:.0f} s (OMNITRAIN_DEMO_TIMEOUT)")


def wait_for_serving(kubeconfig: Path, operator: subprocess.Popen) -> dict:
    """The promotion chain until the inference Deployment is Ready (or a step of it failed)."""
    started, last = time.monotonic(), ""
    while time.monotonic() - started < TIMEOUT_S:
        if operator.poll() is not None:
            raise SystemExit(f"the operator exited with {operator.returncode}; see .dev/operator.log")
        promotion = read_job(kubeconfig).get("status", {}).get("promotion") or {}
        chain = promotion.get("chain", "training:Succeeded")
        if chain != last:
            log(f"{time.monotonic() - started:6.1f}s  promotion: {chain}")
            last = chain
        if (promotion.get("inference") or {}).get("phase") == "Ready":
            return promotion
        if "Failed" in chain:
            raise SystemExit(f"promotion failed: {promotion}; see .dev/operator.log and kubectl logs")
        time.sleep(1.0)  # a progress display polling the API server, not synchronisation
    raise SystemExit(f"serving was not Ready within {TIMEOUT_S:.0f} s (OMNITRAIN_DEMO_TIMEOUT)")


def serving_url(kubeconfig: Path) -> str:
    import json

    pods = json.loads(
        kubectl(
            kubeconfig,
            "get",
            "pods",
            "-n",
            NAMESPACE,
            "-l",
            f"omnitrain.io/promoted-from={JOB},omnitrain.io/role=serve",
            "-o",
            "json",
        ).stdout
    )["items"]
    for pod in pods:
        ready = any(c["type"] == "Ready" and c["status"] == "True" for c in pod["status"].get("conditions", []))
        if ready and pod["status"].get("podIP"):
            port = pod["spec"]["containers"][0]["ports"][0]["containerPort"]
            return f"http://{pod['status']['podIP']}:{port}"
    raise SystemExit("no Ready inference pod; see kubectl get pods")


def ask_for_a_video(url: str) -> None:
    """POST /v1/videos with a prompt; the MP4 and a contact sheet of its frames go to .dev/demo/."""
    import json
    import urllib.request

    from omnitrain.media.contact_sheet import contact_sheet
    from omnitrain.media.video import decode_video

    body = {"prompt": PROMPT, "frames": 9, "height": 32, "width": 64, "seed": 0, "fps": 8}
    request = urllib.request.Request(
        url + "/v1/videos", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    started = time.monotonic()
    with urllib.request.urlopen(request, timeout=300) as answer:
        video = answer.read()
    clip = decode_video(video)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "demo.mp4").write_bytes(video)
    (OUT / "demo-contact-sheet.png").write_bytes(contact_sheet(clip.frames, scale=4))
    t, h, w, _ = clip.frames.shape
    log(
        f"asked the served model for {PROMPT!r}: {t} frames {w}x{h} in {time.monotonic() - started:.1f} s -> "
        f"{OUT / 'demo.mp4'} and {OUT / 'demo-contact-sheet.png'}"
    )


def print_loss_trend(metrics_dir: Path) -> None:
    """The quickstart must really learn: the mean loss of the last steps against the first ones."""
    from omnitrain.metrics_log import read_job_log

    losses = [r["loss"] for r in read_job_log(metrics_dir).of_kind("step") if r.get("loss") is not None]
    if len(losses) < 10:
        log(f"only {len(losses)} logged losses in {metrics_dir}")
        return
    window = max(3, len(losses) // 5)
    first, last = sum(losses[:window]) / window, sum(losses[-window:]) / window
    log(
        f"loss: mean of the first {window} steps {first:.3f} -> last {window} steps {last:.3f} "
        f"({(last - first) / first:+.0%})"
    )


def main() -> int:
    from omnitrain.devcluster.cluster import LocalCluster

    t0 = time.monotonic()
    root = REPO / ".dev" / "cluster"
    cluster = LocalCluster(root).up(nodes=2, gpus_per_node=2, log=log)
    kubeconfig = cluster.kubeconfig
    install_crd(kubeconfig)
    operator = start_operator(kubeconfig, REPO / ".dev" / "operator.log")
    try:
        remove_previous_run(cluster, kubeconfig)
        kubectl(kubeconfig, "apply", "-f", str(REPO / "examples" / "quickstart.yaml"))
        log(f"applied examples/quickstart.yaml; watching OmniTrainingJob {JOB}")
        phase = watch(kubeconfig, operator)
        env = {**os.environ, "KUBECONFIG": str(kubeconfig)}
        print(flush=True)
        subprocess.run([sys.executable, "-m", "omnitrain", "status", JOB, "-n", NAMESPACE, "--no-live"], env=env)
        metrics_dir = cluster.pv_dir(CLAIM) / JOB / "metrics"
        print_loss_trend(metrics_dir)
        report_dir = REPO / ".dev" / "report"
        subprocess.run(
            [
                sys.executable,
                "-m",
                "omnitrain",
                "report",
                JOB,
                "-n",
                NAMESPACE,
                "--out",
                str(report_dir),
                "--metrics-dir",
                str(metrics_dir),
            ],
            env=env,
            check=False,
        )
        log(f"report: {report_dir / 'report.png'} and {report_dir / 'report.html'}")
        if phase == "Succeeded":
            wait_for_serving(kubeconfig, operator)
            ask_for_a_video(serving_url(kubeconfig))
    finally:
        operator.terminate()
        operator.wait(timeout=30)
    log(f"job {JOB} {phase} in {time.monotonic() - t0:.0f} s in all (cluster left running)")
    print(f"export KUBECONFIG={kubeconfig}   # kubectl get otj,pods; `make clean` stops the cluster")
    return 0 if phase == "Succeeded" else 1


if __name__ == "__main__":
    sys.exit(main())
