"""The inference image's torch is development's: the Dockerfile installs the version of the Makefile's
TORCH_SPEC (what every test here runs on, the fused CPU path's private operators included) as a CUDA build,
and pip may not replace it while it installs the service. Checked on paper: nothing here runs Docker."""

from __future__ import annotations

import re
from pathlib import Path

from tests.dockerfile import DOCKERFILE, dockerfile_instructions

ROOT = Path(__file__).resolve().parents[2]
MAKEFILE = ROOT / "Makefile"


def makefile_torch_version() -> str:
    found = re.findall(r"^TORCH_SPEC\s*\??=\s*torch==(\S+)\s*$", MAKEFILE.read_text(), re.MULTILINE)
    assert len(found) == 1, "the Makefile pins torch once, as TORCH_SPEC ?= torch==X.Y.Z"
    return str(found[0])


def dockerfile_args() -> dict[str, str]:
    """The ARG defaults of the Dockerfile (an ARG without a default repeats one inside a stage)."""
    return {
        name: value
        for keyword, rest in dockerfile_instructions()
        if keyword == "ARG" and "=" in rest
        for name, _, value in [rest.partition("=")]
    }


def resolve(text: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), text)


def pip_installs() -> list[str]:
    runs = " ".join(rest for keyword, rest in dockerfile_instructions() if keyword == "RUN")
    return re.findall(r"pip install [^&;]*", runs)


def test_the_image_installs_the_torch_version_development_pins() -> None:
    args = dockerfile_args()
    assert args.get("TORCH_VERSION") == makefile_torch_version(), (
        f"the Dockerfile's TORCH_VERSION {args.get('TORCH_VERSION')!r} is not the Makefile's TORCH_SPEC "
        f"{makefile_torch_version()!r}: the image would run a torch (and a fused CPU path) no test ran"
    )
    torch_installs = [command for command in pip_installs() if re.search(r"\btorch==", command)]
    assert len(torch_installs) == 1, f"install torch once, pinned: {pip_installs()}"
    command = resolve(torch_installs[0], args)
    assert f'"torch=={makefile_torch_version()}"' in command, command


def test_the_image_torch_is_a_cuda_build_from_the_pytorch_wheel_index() -> None:
    args = dockerfile_args()
    (command,) = [c for c in pip_installs() if re.search(r"\btorch==", c)]
    index = re.search(r'--index-url "?(\S+?)"?(\s|$)', resolve(command, args))
    assert index, f"`{command}` names no index: PyPI's torch is not the CUDA build the image wants"
    assert re.fullmatch(r"https://download\.pytorch\.org/whl/cu\d{3}", index.group(1)), index.group(1)


def test_both_stages_build_on_one_pinned_python_3_11_image() -> None:
    args = dockerfile_args()
    froms = [
        resolve(rest.split()[0], args) for keyword, rest in dockerfile_instructions() if keyword == "FROM"
    ]
    assert len(froms) >= 2, "build the wheel in one stage and run it in another"
    assert len(set(froms)) == 1, froms
    repository, _, tag = froms[0].partition(":")
    assert repository == "python" and tag.startswith("3.11-"), f"pin Python 3.11, not {froms[0]!r}"


def test_pip_keeps_the_installed_torch_when_it_installs_the_service() -> None:
    others = [command for command in pip_installs() if not re.search(r"\btorch==", command)]
    assert others, "the Dockerfile installs the service with nothing but pip wheel"
    for command in others:
        assert "--constraint" in command or "--no-deps" in command, (
            f"`{command}` may let pip replace the image's torch; install under a torch constraint"
        )
        assert not re.search(r"\btorch\b", command), f"`{command}` installs torch itself"
    text = DOCKERFILE.read_text()
    constraint = re.search(r"print\('torch==' \+ m\.version\('torch'\)\)\" > (\S+)", text)
    assert constraint, "the constraint file pins the torch installed before the service"
    assert f"--constraint {constraint.group(1)}" in text
    assert text.index("download.pytorch.org") < text.index(constraint.group(0)), "torch first, then the pin"
