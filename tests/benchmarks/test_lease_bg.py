"""benchmarks/lease_bg.sh: a job that outlives one device call - started in its own session, waited on by later calls,
its files copied into each call's (emptied) $OUT."""
from __future__ import annotations

import os
import shutil
import subprocess
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, "benchmarks", "lease_bg.sh")
pytestmark = pytest.mark.skipif(shutil.which("setsid") is None, reason="needs util-linux's setsid, as the device has")


def bg(tmp_path, *args, out=None):
    env = dict(os.environ, QERL_BG_DIR=str(tmp_path / "bg"))
    if out is not None:
        env["OUT"] = str(out)
    return subprocess.run(["bash", SCRIPT, *args], capture_output=True, text=True, env=env, timeout=60, check=False)


def test_a_job_runs_past_its_starting_call_and_a_later_wait_brings_its_files(tmp_path):
    first, second = tmp_path / "out1", tmp_path / "out2"
    first.mkdir()
    second.mkdir()
    gate = tmp_path / "gate"
    command = f'echo row > "$OUT/row.json"; while [ ! -e {gate} ]; do sleep 0.2; done; echo "INFO noise"; echo done'
    started = bg(tmp_path, "start", "job", command, out=first)
    assert started.returncode == 0 and "job started" in started.stdout
    assert bg(tmp_path, "start", "job", "true").returncode == 2  # one job of a name at a time
    waiting = bg(tmp_path, "wait", "job", "1", out=first)  # the first call ends with the job still running
    assert waiting.returncode == 3 and "still running" in waiting.stdout
    assert (first / "row.json").read_text() == "row\n" and not (first / "job.rc").exists()
    gate.touch()
    done = bg(tmp_path, "wait", "job", "30", out=second)  # a later call: its own empty $OUT
    assert done.returncode == 0 and "finished with exit status 0" in done.stdout
    assert "done" in done.stdout and "INFO noise" not in done.stdout  # the log's tail, vLLM's INFO lines left out
    assert (second / "row.json").exists() and (second / "job.rc").read_text().strip() == "0"
    assert "INFO noise" in (second / "job.log").read_text()  # the whole log comes back as a file


def test_a_failing_job_reports_its_status_and_bad_calls_say_what_is_wrong(tmp_path):
    assert bg(tmp_path, "start", "bad", "echo oops; exit 7").returncode == 0
    deadline = time.time() + 30
    while not (tmp_path / "bg" / "bad" / "rc").exists() and time.time() < deadline:
        time.sleep(0.1)
    done = bg(tmp_path, "wait", "bad", "5")
    assert done.returncode == 0 and "exit status 7" in done.stdout and "oops" in done.stdout
    assert "no job nothing" in bg(tmp_path, "wait", "nothing", "1").stderr
    assert "no command given" in bg(tmp_path, "start", "empty").stderr
    assert "usage" in bg(tmp_path, "start").stderr and "unknown action" in bg(tmp_path, "go", "x").stderr


def test_a_job_with_more_files_than_a_call_brings_back_comes_back_as_one_tarball(tmp_path):
    import tarfile

    out = tmp_path / "out"
    out.mkdir()
    command = 'for i in 1 2 3 4 5 6 7; do echo $i > "$OUT/f$i.log"; done; mkdir -p "$OUT/a/b" && echo x > "$OUT/a/b/deep"'
    assert bg(tmp_path, "start", "many", command).returncode == 0
    done = bg(tmp_path, "wait", "many", "30", out=out)
    assert done.returncode == 0 and "8 files in many-out.tgz" in done.stdout
    assert sorted(p.name for p in out.iterdir()) == ["many-out.tgz", "many.log", "many.rc"]  # 3 of the 8 a call brings
    with tarfile.open(out / "many-out.tgz") as tar:
        names = {n.removeprefix("./") for n in tar.getnames()}
    assert {f"f{i}.log" for i in range(1, 8)} | {"a/b/deep"} <= names
