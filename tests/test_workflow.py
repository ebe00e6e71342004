"""The example CI workflow: valid YAML whose compress commands and gates this CLI accepts."""

import re
import shlex
import subprocess
import sys
from pathlib import Path

import yaml

from compress.gates import parse_gates

ROOT = Path(__file__).resolve().parents[1]
WORKFLOW = ROOT / ".github" / "workflows" / "compress.yml"


def _workflow() -> dict:
    return yaml.safe_load(WORKFLOW.read_text())


def _compress_calls() -> list[list[str]]:
    calls = []
    for step in _workflow()["jobs"]["compress"]["steps"]:
        run = step.get("run", "")
        if ".venv/bin/compress" not in run:
            continue
        text = re.sub(r'"\$\(.*?\)"', "X", run)                # "$(jq ...)" -> a placeholder
        text = re.sub(r'"\$[A-Z_]+"', "X", text)                # "$VAR" -> X
        text = re.sub(r"\s>\s*\S+\s*$", "", text.strip())           # drop "> file"
        argv = shlex.split(text.replace("\n", " "))
        calls.append(argv[argv.index(".venv/bin/compress") + 1:])
    return calls


def test_workflow_is_a_scheduled_job_with_a_time_limit():
    wf = _workflow()
    triggers = wf[True] if True in wf else wf["on"]  # YAML 1.1 reads the key `on` as True
    assert triggers["schedule"][0]["cron"]
    job = wf["jobs"]["compress"]
    assert job["timeout-minutes"] <= 90
    names = [s.get("name", "") for s in job["steps"]]
    assert any("gate" in n.lower() for n in names) and any("promote" in n.lower() for n in names)


def test_every_compress_command_in_the_workflow_parses():
    calls = _compress_calls()
    assert [c[0] for c in calls] == ["pipeline", "export", "registry"]
    for argv in calls:
        # click rejects unknown options and missing arguments even when --help is given
        r = subprocess.run([sys.executable, "-m", "compress", *argv, "--help"],
                           capture_output=True, text=True)
        assert r.returncode == 0, (argv, r.stderr)


def test_the_gates_parse_and_name_stages_of_the_pipeline():
    argv = _compress_calls()[0]
    gates = parse_gates([argv[i + 1] for i, a in enumerate(argv) if a == "--gate"])
    assert len(gates) == 3
    default = re.search(r"default: (pipelines/\S+)", WORKFLOW.read_text()).group(1)
    stage_ids = {s["id"] for s in yaml.safe_load((ROOT / default).read_text())["stages"]}
    for g in gates:
        assert g.path.split(".")[0] == "stages" and g.path.split(".")[1] in stage_ids, g.path
