"""The Dockerfile's recipe, carried out on this machine (no Docker daemon here): the builder
stage's COPY and RUN make the wheel, the final stage's RUN installs it into a fresh venv, and
the final stage's ENV, USER and ENTRYPOINT say how the image runs.

Only the instructions the Dockerfile uses are understood; any other one is an error, so a
change to the Dockerfile cannot slip past the emulation unseen. Absolute paths of the image
(``/opt/venv``, the mounts' targets, the builder's output) are mapped onto a work directory.
The base image's ``python`` is Debian's ``/usr/bin/python3`` (readable by any user, unlike an
interpreter under /root), and its ``pip`` is this process's pip.

Run as a script, it installs the image's venv into a directory and prints its path::

    python tests/image_recipe.py /var/tmp/objstore-image
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
#: Stands in for the base image's interpreter (/usr/local/bin/python in python:3.11-slim).
BASE_PYTHON = Path("/usr/bin/python3")
#: The base image's PATH (python:3.11-slim-bookworm), and its ENV.
BASE_PATH = "/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin"
BASE_ENV = {"PATH": BASE_PATH, "LANG": "C.UTF-8"}
#: Where the final stage puts the venv.
IMAGE_VENV = "/opt/venv"
#: What .dockerignore keeps out of the context inside copied directories.
IGNORED = shutil.ignore_patterns("__pycache__", "*.py[cod]")


@dataclass
class Instruction:
    keyword: str  # upper case: FROM, RUN, ...
    flags: dict[str, str]  # --name=value before the arguments (a RUN's mounts under "mount:N")
    args: str


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def one(self, keyword: str) -> Instruction:
        (found,) = self.all(keyword)
        return found


@dataclass
class Dockerfile:
    global_args: dict[str, str]
    stages: list[Stage]

    @property
    def final(self) -> Stage:
        return self.stages[-1]

    def stage(self, name: str) -> Stage:
        (found,) = (s for s in self.stages if s.name == name)
        return found


def _logical_lines(text: str) -> list[str]:
    """Instructions one per line: comment lines dropped, ``\\`` continuations joined."""
    lines: list[str] = []
    current = ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not current):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        lines.append(current + stripped)
        current = ""
    assert not current, "the Dockerfile ends in a line continuation"
    return lines


def _split_flags(args: str) -> tuple[dict[str, str], str]:
    flags: dict[str, str] = {}
    mounts = 0
    while args.startswith("--"):
        flag, _, args = args.partition(" ")
        name, _, value = flag[2:].partition("=")
        if name == "mount":
            name, mounts = f"mount:{mounts}", mounts + 1
        flags[name] = value
        args = args.lstrip()
    return flags, args


def parse_dockerfile(path: Path = DOCKERFILE) -> Dockerfile:
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in _logical_lines(path.read_text()):
        keyword, _, rest = line.partition(" ")
        keyword = keyword.upper()
        flags, args = _split_flags(rest.strip())
        if keyword == "FROM":
            words = args.split()
            assert len(words) in (1, 3) and (len(words) == 1 or words[1].upper() == "AS"), line
            base = re.sub(r"\$\{(\w+)\}", lambda m: global_args[m[1]], words[0])
            stages.append(Stage(base=base, name=words[2] if len(words) == 3 else None))
        elif not stages:
            assert keyword == "ARG", f"only ARG may come before the first FROM: {line}"
            name, _, default = args.partition("=")
            global_args[name] = default
        else:
            stages[-1].instructions.append(Instruction(keyword, flags, args))
    return Dockerfile(global_args, stages)


def mount_options(flag: str) -> dict[str, str]:
    """``type=bind,from=builder,source=/dist,target=/dist`` as a dict."""
    return dict(part.split("=", 1) for part in flag.split(","))


def env_assignments(args: str, env: dict[str, str]) -> dict[str, str]:
    """An ENV instruction's ``KEY=VALUE`` pairs, ``$VAR`` and ``${VAR}`` expanded from ``env``."""
    pairs = {}
    for word in shlex.split(args):
        name, sep, value = word.partition("=")
        assert sep, f"ENV {args!r}: use the KEY=VALUE form"
        pairs[name] = re.sub(r"\$\{?(\w+)\}?", lambda m: env.get(m[1], ""), value)
    return pairs


@dataclass
class Image:
    """The final stage as carried out here: the venv, and how a container of it starts."""

    venv: Path
    env: dict[str, str]  # the image's ENV, over the base image's PATH, with /opt/venv mapped
    user: str
    entrypoint: list[str]
    workdir: str


class Recipe:
    """Carries out ``dockerfile`` in ``work`` (a directory of its own, empty)."""

    def __init__(self, work: Path, dockerfile: Dockerfile | None = None) -> None:
        self.work = work
        self.dockerfile = dockerfile or parse_dockerfile()
        self.venv = work / "venv"
        self._stage_roots: dict[str, Path] = {}
        bin_dir = work / "base-bin"
        bin_dir.mkdir(parents=True)
        (bin_dir / "python").symlink_to(BASE_PYTHON)
        pip = bin_dir / "pip"
        pip.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -m pip "$@"\n')
        pip.chmod(0o755)
        self._build_path = f"{bin_dir}:{BASE_PATH}"

    def _map(self, command: str, paths: dict[str, Path]) -> str:
        """``command`` with the image's absolute paths replaced by their places under ``work``."""
        for image_path in sorted(paths, key=len, reverse=True):
            command = re.sub(rf"(?<![\w/.-]){re.escape(image_path)}(?![\w.-])", str(paths[image_path]), command)
        return command

    def _run(self, instruction: Instruction, cwd: Path, paths: dict[str, Path], env: dict[str, str]) -> None:
        command = self._map(instruction.args, paths)
        run_env = {**BASE_ENV, "PATH": self._build_path, "HOME": str(self.work), **env}
        result = subprocess.run(
            ["/bin/sh", "-c", command], cwd=cwd, env=run_env, capture_output=True, text=True, timeout=600
        )
        assert result.returncode == 0, f"RUN {command}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"

    def build_stage(self, stage: Stage, outputs: set[str]) -> Path:
        """A builder stage: its WORKDIR, COPYs from the repo and RUNs; returns its root.

        ``outputs`` are the paths later stages mount from it, mapped under that root.
        """
        root = self.work / f"stage-{stage.name}"
        paths = {output: root / output.lstrip("/") for output in outputs}
        workdir = root
        for instruction in stage.instructions:
            if instruction.keyword == "WORKDIR":
                workdir = root / instruction.args.lstrip("/")
                workdir.mkdir(parents=True, exist_ok=True)
            elif instruction.keyword == "COPY" and not instruction.flags:
                *sources, dest = instruction.args.split()
                assert len(sources) == 1 or dest.endswith("/"), instruction.args
                for source in sources:
                    copied = REPO / source
                    if copied.is_dir():  # its contents go into dest
                        shutil.copytree(copied, workdir / dest, dirs_exist_ok=True, ignore=IGNORED)
                    else:
                        target = workdir / dest / copied.name if dest.endswith("/") else workdir / dest
                        target.parent.mkdir(parents=True, exist_ok=True)
                        shutil.copy2(copied, target)
            elif instruction.keyword == "RUN" and not instruction.flags:
                self._run(instruction, workdir, paths, {})
            else:
                raise AssertionError(f"builder stage: {instruction.keyword} {instruction.args} is not emulated")
        return root

    def install(self) -> Image:
        """Build the stages the final one mounts from, then carry out the final stage."""
        final = self.dockerfile.final
        mounts = [mount_options(f) for i in final.all("RUN") for n, f in i.flags.items() if n.startswith("mount:")]
        for stage in self.dockerfile.stages[:-1]:
            assert stage.name, "every stage but the last is named"
            outputs = {mount["source"] for mount in mounts if mount.get("from") == stage.name}
            self._stage_roots[stage.name] = self.build_stage(stage, outputs)
        root = self.work / "stage-final"  # the final stage's RUNs start in its empty root
        root.mkdir()
        args: dict[str, str] = {}
        env = dict(BASE_ENV)
        user = workdir = ""
        entrypoint: list[str] = []
        paths = {IMAGE_VENV: self.venv}
        for instruction in final.instructions:
            keyword = instruction.keyword
            if keyword == "ARG":
                name, _, default = instruction.args.partition("=")
                args[name] = default
            elif keyword == "RUN":
                run_paths = dict(paths)
                for name, flag in instruction.flags.items():
                    assert name.startswith("mount:"), f"RUN --{name} is not emulated"
                    mount = mount_options(flag)
                    assert mount.pop("type") == "bind", flag
                    source = mount["source"]
                    if "from" in mount:
                        run_paths[mount["target"]] = self._stage_roots[mount["from"]] / source.lstrip("/")
                    else:
                        run_paths[mount["target"]] = REPO / source
                self._run(instruction, root, run_paths, args)
            elif keyword == "ENV":
                env.update(env_assignments(self._map(instruction.args, paths), env))
            elif keyword == "USER":
                user = instruction.args
            elif keyword == "WORKDIR":
                workdir = instruction.args
            elif keyword == "ENTRYPOINT":
                entrypoint = json.loads(instruction.args)
            elif keyword != "CMD":
                raise AssertionError(f"final stage: {keyword} {instruction.args} is not emulated")
        return Image(venv=self.venv, env=env, user=user, entrypoint=entrypoint, workdir=workdir)


def context_sources(dockerfile: Dockerfile) -> set[str]:
    """Every path of the build context that the Dockerfile copies or mounts."""
    found = set()
    for stage in dockerfile.stages:
        for instruction in stage.instructions:
            if instruction.keyword in ("COPY", "ADD") and "from" not in instruction.flags:
                found.update(instruction.args.split()[:-1])
            for name, flag in instruction.flags.items():
                mount = mount_options(flag) if name.startswith("mount:") else {}
                if mount.get("type") == "bind" and "from" not in mount:
                    found.add(mount["source"])
    return {source.rstrip("/") for source in found}


def installed_bytes(root: Path) -> int:
    """The bytes of the regular files under ``root``, as an image layer would hold them."""
    return sum(path.lstat().st_size for path in root.rglob("*") if path.is_file() and not path.is_symlink())


def main() -> None:
    work = Path(sys.argv[1])
    work.mkdir(parents=True)
    image = Recipe(work).install()
    print(image.venv)


if __name__ == "__main__":
    main()
