"""Dockerfile -> OCI image: `pykvm container build`.

A build walks the Dockerfile top-down, keeping a *build state*: the image
config so far, its layers, and (only when a step needs files) the root
filesystem unpacked in a scratch directory.

    FROM      start from scratch, a local image, or one pulled from a registry
    COPY/ADD  copy context files into the rootfs            -> one layer
    RUN       run a command in a container of the rootfs   -> one layer
    ENV ARG WORKDIR USER CMD ENTRYPOINT LABEL EXPOSE ...    -> config only (a history entry)

A layer is what changed in the rootfs during its step (pykvm.container.image.layer:
a snapshot before, a walk after, deletions as whiteouts), written
deterministically, so the same input gives the same digests.

Build cache: each step has a key, sha256 over the previous step's key, the
instruction as expanded, and what it reads (for COPY/ADD, every source
file's path, mode and content hash).  A layer step whose key is in
build-cache.json reuses the cached layer without unpacking anything, so a
second build of an unchanged Dockerfile does no file work at all.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import posixpath
import re
import shutil
import stat
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

from pykvm.container.image.dockerfile import (HEREDOC_RE, BuildFileError, Dockerfile, DockerIgnore,
                                              Instruction, parse_exec_form, expand, parse_dockerfile,
                                              shell_words)
from pykvm.container.image.store import (MEDIA_OCI_LAYER_GZIP, Image, ImageStore, host_platform,
                                         normalize_name)
from pykvm.container.image.layer import (apply_layer, changes_since, copy_xattrs, secure_join, snapshot,
                                         write_layer)
from pykvm.errors import ContainerError

__all__ = ["BuildOptions", "build_image", "BuildState", "RUN_SKIP"]

DEFAULT_SHELL = ["/bin/sh", "-c"]          # Dockerfile reference: the default SHELL on Linux
DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
CACHE_FILE = "build-cache.json"
# Top-level paths a container run mounts over (kernel filesystems): never part of a RUN layer.
RUN_SKIP = frozenset({"proc", "sys", "dev"})
COPY_FILE_MODE_MASK = 0o7777
GLOB_CHARS = set("*?[")
HEALTHCHECK_DURATIONS = {"interval": "Interval", "timeout": "Timeout", "start-period": "StartPeriod",
                         "start-interval": "StartInterval"}
DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")


@dataclass
class BuildOptions:
    context: str
    tag: str | None = None
    dockerfile: str | None = None          # default: CONTEXT/Dockerfile
    build_args: dict[str, str] = field(default_factory=dict)
    no_cache: bool = False
    log: object = None                      # callable(str) for step lines; None = silent
    target: str | None = None               # --target: the stage to build (default: the last)


@dataclass
class Source:
    """Where COPY reads: the build context (with .dockerignore), or an earlier stage's files (--from)."""

    base: str                         # a directory; sources are resolved inside it
    ignore: DockerIgnore
    key: str | None = None            # a stage's cache key stands for its content (no hashing)
    owners: dict | None = None        # a stage's files keep their owners (this: those we could not set)


@dataclass
class BuildState:
    """The image being built: config, layers so far, cache key, and (maybe) an unpacked rootfs."""

    config: dict
    layers: list[dict]
    cache_key: str
    rootfs: str | None = None
    owners: dict = field(default_factory=dict)     # path -> (uid, gid) we could not chown (not root)
    cmd_set: bool = False                          # CMD given in this stage (ENTRYPOINT keeps it)
    name: str | None = None                        # FROM ... AS name
    args: dict[str, str] = field(default_factory=dict)
    shell: list[str] = field(default_factory=lambda: list(DEFAULT_SHELL))
    index: int = 0                                 # its place among the Dockerfile's stages

    @property
    def cfg(self) -> dict:
        return self.config.setdefault("config", {})

    def env(self) -> dict[str, str]:
        return dict(e.split("=", 1) for e in self.cfg.get("Env") or [] if "=" in e)


def platform_args() -> dict[str, str]:
    """BuildKit's automatic platform ARGs (Dockerfile reference, "Automatic platform ARGs in
    the global scope"): pykvm builds for the machine it runs on, so target = build."""
    _, arch, variant = host_platform()
    variant = variant if arch == "arm" else ""         # BuildKit names arm's variant only
    plat = f"linux/{arch}" + (f"/{variant}" if variant else "")
    return {f"{side}{key}": value for side in ("TARGET", "BUILD") for key, value in
            (("PLATFORM", plat), ("OS", "linux"), ("ARCH", arch), ("VARIANT", variant))}


def _key(*parts: str) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode())
        h.update(b"\0")
    return "sha256:" + h.hexdigest()


def _created() -> str:
    """The timestamp in configs and history: SOURCE_DATE_EPOCH or the epoch, so rebuilds match."""
    import datetime

    from pykvm.container.image.layer import layer_mtime
    return datetime.datetime.fromtimestamp(layer_mtime(), datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class Builder:
    """Runs one Dockerfile against one store."""

    def __init__(self, store: ImageStore, options: BuildOptions):
        self.store = store
        self.options = options
        self.context = os.path.realpath(options.context)
        if not os.path.isdir(self.context):
            raise ContainerError(f"build context {options.context} is not a directory")
        path = options.dockerfile or os.path.join(self.context, "Dockerfile")
        self.file: Dockerfile = parse_dockerfile(_read_text(path), os.path.basename(path))
        ignore = Path(self.context, ".dockerignore")
        self.ignore = DockerIgnore(_read_text(ignore) if ignore.exists() else "")
        self.cache = self._load_cache()
        self.used_args: set[str] = set()
        self.state: BuildState | None = None
        self.stages: dict[str, BuildState] = {}     # finished stages by index ("0") and by AS name
        self.scratch: list[str] = []                # temporary folders (here-documents) to remove
        self.stage_index = 0                        # the next FROM's stage number (COPY --from=N)
        self.stage_ends: dict[int, Instruction] = {}
        self.global_args: dict[str, str] = {}

    def log(self, text: str) -> None:
        if self.options.log:
            self.options.log(text)

    # --- the build cache
    def _load_cache(self) -> dict:
        try:
            return json.loads((self.store.root / CACHE_FILE).read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return {}

    def _save_cache(self) -> None:
        with self.store.locked():
            merged = self._load_cache()
            merged.update(self.cache)
            path = self.store.root / CACHE_FILE
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(merged, indent=1, sort_keys=True))
            os.replace(tmp, path)

    # --- the walk
    def run(self) -> Image:
        global_args = platform_args()
        steps = self.file.instructions
        needed = self._needed_stages(dict(global_args))
        stage = -1
        try:
            for number, ins in enumerate(steps, 1):
                stage += ins.keyword == "FROM"
                if stage >= 0 and stage not in needed:
                    continue                            # a stage the target does not need
                self.log(f"STEP {number}/{len(steps)}: {ins.keyword} {ins.args}")
                self._step(ins, global_args)
                if stage == max(needed) and ins is self.stage_ends[stage]:
                    break                               # the target stage is done
            unused = set(self.options.build_args) - self.used_args
            for name in sorted(unused):
                self.log(f"warning: build argument {name} was not consumed by any ARG")
            return self._commit()
        finally:
            self._drop_rootfs()
            self._save_cache()

    def _needed_stages(self, global_args: dict[str, str]) -> set[int]:
        """The stages the target needs: itself, and every stage a FROM or COPY --from of a
        needed stage names (BuildKit builds only those; a broken unused stage cannot fail
        the build)."""
        stages: list[list[Instruction]] = []
        names: dict[str, int] = {}
        for ins in self.file.instructions:
            if ins.keyword == "FROM":
                stages.append([])
                words = shell_words(ins.args, global_args, self.file.escape)
                if len(words) == 3 and words[1].lower() == "as":
                    names[words[2].lower()] = len(stages) - 1
            elif not stages:
                if ins.keyword == "ARG":
                    self._arg(ins, global_args, count_use=False)
                continue
            stages[-1].append(ins)
        if not stages:
            raise BuildFileError(self.file.filename, 1, "the Dockerfile has no FROM")
        self.stage_ends = {i: (st[-1] if st else None) for i, st in enumerate(stages)}
        firsts = [i for i in self.file.instructions if i.keyword == "FROM"]
        for i, ins in enumerate(firsts):
            if self.stage_ends[i] is None:
                self.stage_ends[i] = ins
        target = len(stages) - 1
        if self.options.target:
            if self.options.target.lower() not in names:
                raise ContainerError(f"--target {self.options.target}: no stage has that name "
                                     f"(stages: {', '.join(sorted(names)) or 'none named'})")
            target = names[self.options.target.lower()]

        def refs(index: int) -> set[int]:
            found = set()
            words = shell_words(firsts[index].args, global_args, self.file.escape)
            candidates = [words[0].lower()] if words else []
            candidates += [i.flags["from"].lower() for i in stages[index]
                           if i.keyword in ("COPY", "ADD") and "from" in i.flags]
            for ref in candidates:
                if ref in names and names[ref] < index:
                    found.add(names[ref])
                elif ref.isdigit() and int(ref) < index:
                    found.add(int(ref))
            return found
        needed, todo = set(), [target]
        while todo:
            index = todo.pop()
            if index not in needed:
                needed.add(index)
                todo += refs(index)
        return needed

    def _step(self, ins: Instruction, global_args: dict[str, str]) -> None:
        """One instruction; any error is reported as FILE:LINE: KEYWORD: message."""
        try:
            if ins.keyword == "ARG" and self.state is None:
                self._arg(ins, global_args)
            elif ins.keyword == "FROM":
                self._from(ins, global_args)
            elif self.state is None:
                raise self.file.error(ins, "the first instruction must be FROM (or ARG before FROM)")
            else:
                getattr(self, "_" + ins.keyword.lower())(ins)
        except BuildFileError:
            raise
        except ContainerError as e:
            raise self.file.error(ins, str(e)) from None

    def _commit(self) -> Image:
        state = self.state
        state.config["created"] = _created()
        return self.store.add_image(self.options.tag, state.config, state.layers)   # no tag: <none>

    # --- FROM and ARG
    def _from(self, ins: Instruction, global_args: dict[str, str]) -> None:
        """Start a stage: from scratch, an earlier stage, a local image, or a registry's."""
        self._drop_rootfs()
        if self.state is not None:
            self._finish_stage()
        words = shell_words(ins.args, global_args, self.file.escape)
        if len(words) not in (1, 3) or (len(words) == 3 and words[1].lower() != "as"):
            raise self.file.error(ins, "want FROM IMAGE [AS NAME]")
        base = words[0]
        if base == "scratch":
            self.state = BuildState(_empty_config(), [], _key("scratch"))
        elif base.lower() in self.stages:
            stage = self.stages[base.lower()]
            self.state = BuildState(json.loads(json.dumps(stage.config)), list(stage.layers), stage.cache_key)
        else:
            image = self._base_image(ins, base)
            config = json.loads(json.dumps(image.config))        # a deep copy we may change
            self.state = BuildState(config, [dict(d) for d in image.layers], _key("from", image.manifest_digest))
            self.state.cfg.setdefault("Env", [DEFAULT_PATH])
        self.global_args = global_args              # a stage sees them only through `ARG NAME`
        self.state.args = {}
        self.state.name = words[2].lower() if len(words) == 3 else None
        self.state.index = self.stage_index
        self.stage_index += 1
        self._run_triggers(ins)

    def _run_triggers(self, ins: Instruction) -> None:
        """ONBUILD: the base image's triggers run first, in the child's build and context,
        and are not passed on to the child's own image (Dockerfile reference, ONBUILD)."""
        for text in self.state.cfg.pop("OnBuild", None) or []:
            self.log(f" ---> ONBUILD {text}")
            for trigger in parse_dockerfile(text, self.file.filename).instructions:
                trigger.line = ins.line
                if trigger.keyword in ("FROM", "ONBUILD", "MAINTAINER"):
                    raise self.file.error(ins, f"the base image's ONBUILD {trigger.keyword} is not allowed")
                self._step(trigger, self.global_args)

    def _finish_stage(self) -> None:
        """Keep the stage that just ended for COPY --from (by index and by its AS name)."""
        self.stages[str(self.state.index)] = self.state
        if self.state.name:
            self.stages[self.state.name] = self.state

    def _base_image(self, ins: Instruction, name: str) -> Image:
        try:
            return self.store.get(name)
        except ContainerError:
            pass
        from pykvm.container.image.store import split_reference
        host, _, _, _ = split_reference(name)
        if host is None:
            raise self.file.error(ins, f"no such image: {name} (build or pull it first)")
        from pykvm.container.image.registry import pull
        self.log(f"pulling {name}")
        return pull(self.store, name)

    def _arg(self, ins: Instruction, scope: dict[str, str] | None = None, count_use: bool = True) -> None:
        """ARG NAME[=DEFAULT]: --build-arg wins, then the default; in a stage, a bare `ARG NAME`
        brings in the value of a global ARG (one declared before the first FROM) of that name."""
        target = scope if scope is not None else self.state.args
        env = target if scope is not None else {**self.state.args, **self.state.env()}
        for word in shell_words(ins.args, env, self.file.escape):
            name, eq, default = word.partition("=")
            if name in self.options.build_args:
                target[name] = self.options.build_args[name]
                if count_use:
                    self.used_args.add(name)
            elif eq:
                target[name] = default
            elif scope is None and name in self.global_args:
                target[name] = self.global_args[name]     # a global ARG redeclared: its value
            else:
                target.setdefault(name, "")

    # --- config-only instructions
    def _expand_env(self) -> dict[str, str]:
        return {**self.state.args, **self.state.env()}

    def _words(self, ins: Instruction) -> list[str]:
        return shell_words(ins.args, self._expand_env(), self.file.escape)

    def _note(self, ins: Instruction, text: str | None = None) -> None:
        """A config-only step: history entry and cache key."""
        self.state.config.setdefault("history", []).append(
            {"created": _created(), "created_by": text or ins.text, "empty_layer": True})
        self.state.cache_key = _key(self.state.cache_key, text or ins.text,
                                    json.dumps(self.state.cfg, sort_keys=True))

    def _pairs(self, ins: Instruction) -> list[tuple[str, str]]:
        """KEY=VALUE words, or the legacy `KEY VALUE...` form of ENV and LABEL."""
        words = self._words(ins)
        if words and "=" not in words[0]:
            if len(words) < 2:
                raise self.file.error(ins, "want KEY=VALUE")
            rest = ins.args.split(None, 1)[1]
            return [(words[0], expand(rest, self._expand_env(), self.file.escape))]
        pairs = []
        for w in words:
            key, eq, value = w.partition("=")
            if not eq or not key:
                raise self.file.error(ins, f"want KEY=VALUE, got {w!r}")
            pairs.append((key, value))
        return pairs

    def _env(self, ins: Instruction) -> None:
        env = self.state.env()
        for key, value in self._pairs(ins):
            env[key] = value
        self.state.cfg["Env"] = [f"{k}={v}" for k, v in env.items()]
        self._note(ins)

    def _label(self, ins: Instruction) -> None:
        labels = self.state.cfg.setdefault("Labels", {})
        labels.update(self._pairs(ins))
        self._note(ins)

    def _maintainer(self, ins: Instruction) -> None:
        self.state.config["author"] = ins.args
        self._note(ins)

    def _expose(self, ins: Instruction) -> None:
        ports = self.state.cfg.setdefault("ExposedPorts", {})
        for word in self._words(ins):
            spec, _, proto = word.partition("/")
            first, dash, last = spec.partition("-")
            numbers = [first, last] if dash else [first]
            if (not all(n.isdigit() and 0 < int(n) < 65536 for n in numbers)
                    or int(numbers[0]) > int(numbers[-1]) or proto not in ("", "tcp", "udp", "sctp")):
                raise self.file.error(ins, f"invalid port {word!r} (want PORT[-PORT][/tcp|udp|sctp])")
            for port in range(int(numbers[0]), int(numbers[-1]) + 1):    # a range: each port (docker's rule)
                ports[f"{port}/{proto or 'tcp'}"] = {}
        self._note(ins)

    def _volume(self, ins: Instruction) -> None:
        vols = ins.exec_form or self._words(ins)
        self.state.cfg.setdefault("Volumes", {}).update({v: {} for v in vols})
        self._note(ins)

    def _user(self, ins: Instruction) -> None:
        words = self._words(ins)
        if len(words) != 1:
            raise self.file.error(ins, "want USER NAME[:GROUP]")
        self.state.cfg["User"] = words[0]
        self._note(ins)

    def _workdir(self, ins: Instruction) -> None:
        path = expand(ins.args.strip(), self._expand_env(), self.file.escape)
        if not path:
            raise self.file.error(ins, "want WORKDIR PATH")
        base = self.state.cfg.get("WorkingDir") or "/"
        workdir = posixpath.normpath(posixpath.join(base, path))
        self.state.cfg["WorkingDir"] = workdir
        self._make_workdir(ins, workdir)

    def _make_workdir(self, ins: Instruction, workdir: str) -> None:
        """WORKDIR makes its directory in the image, owned by USER (as BuildKit does): a layer
        when it is new, a config-only step when the image has it already."""
        user = self.state.cfg.get("User") or ""
        material = json.dumps(["WORKDIR", workdir, user])
        cached = self.cache.get(_key(self.state.cache_key, material))
        if not (cached and not self.options.no_cache and "digest" in cached):
            exists = cached == {"exists": True} and not self.options.no_cache
            if exists or os.path.isdir(secure_join(self._rootfs(), workdir)):
                self.cache[_key(self.state.cache_key, material)] = {"exists": True}
                return self._note(ins)

        def mutate(root: str) -> None:
            owner = self._owner(ins, root, user) if user else (0, 0)
            _make_dirs(root, secure_join(root, workdir), self.state.owners, owner)
        self._layer_step(ins, material, mutate, ins.text)

    def _stopsignal(self, ins: Instruction) -> None:
        self.state.cfg["StopSignal"] = self._words(ins)[0]
        self._note(ins)

    def _shell(self, ins: Instruction) -> None:
        if not ins.exec_form:
            raise self.file.error(ins, "SHELL needs the JSON form: SHELL [\"/bin/sh\", \"-c\"]")
        self.state.shell = ins.exec_form
        self._note(ins)

    def _command(self, ins: Instruction) -> list[str]:
        return ins.exec_form if ins.exec_form is not None else self.state.shell + [ins.args]

    def _cmd(self, ins: Instruction) -> None:
        self.state.cfg["Cmd"] = self._command(ins)
        self.state.cmd_set = True
        self._note(ins)

    def _entrypoint(self, ins: Instruction) -> None:
        self.state.cfg["Entrypoint"] = self._command(ins)
        if not self.state.cmd_set:
            self.state.cfg.pop("Cmd", None)           # an inherited CMD does not survive a new ENTRYPOINT
        self._note(ins)

    def _healthcheck(self, ins: Instruction) -> None:
        """HEALTHCHECK [--interval=D --timeout=D --start-period=D --start-interval=D --retries=N]
        CMD command | NONE: kept in the config as docker keeps it (durations in nanoseconds)."""
        unknown = set(ins.flags) - set(HEALTHCHECK_DURATIONS) - {"retries"}
        if unknown:
            raise self.file.error(ins, f"unknown flag --{sorted(unknown)[0]}")
        keyword, _, rest = ins.args.partition(" ")
        if keyword.upper() == "NONE" and not rest.strip():
            self.state.cfg["Healthcheck"] = {"Test": ["NONE"]}
            return self._note(ins)
        if keyword.upper() != "CMD" or not rest.strip():
            raise self.file.error(ins, "want HEALTHCHECK [OPTIONS] CMD command, or HEALTHCHECK NONE")
        form = parse_exec_form(rest.strip())
        check = {"Test": ["CMD", *form] if form is not None else ["CMD-SHELL", rest.strip()]}
        for flag, field_name in HEALTHCHECK_DURATIONS.items():
            if flag in ins.flags:
                check[field_name] = _duration_ns(ins.flags[flag], self.file, ins)
        if "retries" in ins.flags:
            if not ins.flags["retries"].isdigit():
                raise self.file.error(ins, f"--retries={ins.flags['retries']}: want a number")
            check["Retries"] = int(ins.flags["retries"])
        self.state.cfg["Healthcheck"] = check
        self._note(ins)

    def _onbuild(self, ins: Instruction) -> None:
        keyword = ins.args.split(None, 1)[0].upper() if ins.args.strip() else ""
        if keyword in ("", "FROM", "ONBUILD", "MAINTAINER"):
            raise self.file.error(ins, f"ONBUILD {keyword or 'needs an instruction'}"
                                       + (" is not allowed" if keyword else ""))
        self.state.cfg.setdefault("OnBuild", []).append(ins.args)
        self._note(ins)

    # --- layer steps
    def _layer_step(self, ins: Instruction, key_material: str, mutate, created_by: str) -> None:
        """Reuse the cached layer for this key, or unpack the rootfs, mutate it and diff it."""
        state = self.state
        key = _key(state.cache_key, key_material)
        cached = self.cache.get(key)
        if cached and not self.options.no_cache and self.store.has_blob(cached["digest"]):
            self.log(" ---> using cache")
            descriptor, diff_id = cached["descriptor"], cached["diff_id"]
            if state.rootfs is not None:
                with open(self.store.blob_path(descriptor["digest"]), "rb") as blob:
                    apply_layer(blob, state.rootfs, owners=state.owners)
        else:
            descriptor, diff_id = self._make_layer(mutate, ins)
            self.cache[key] = {"digest": descriptor["digest"], "descriptor": descriptor, "diff_id": diff_id}
        state.layers.append(descriptor)
        state.config.setdefault("rootfs", {"type": "layers", "diff_ids": []})["diff_ids"].append(diff_id)
        state.config.setdefault("history", []).append({"created": _created(), "created_by": created_by})
        state.cache_key = key

    def _make_layer(self, mutate, ins: Instruction) -> tuple[dict, str]:
        root = self._rootfs()
        before = snapshot(root, RUN_SKIP)
        mutate(root)
        changes = changes_since(before, root, RUN_SKIP)
        fd, tmp = self.store.temp_file(".tar.gz")
        with os.fdopen(fd, "wb") as out:
            digests = write_layer(root, changes, out, owners=self.state.owners)
        self.store.put_file(tmp, digests.digest, digests.size)
        self.log(f" ---> layer {digests.digest[:19]} ({len(changes)} changes)")
        return {"mediaType": MEDIA_OCI_LAYER_GZIP, "digest": digests.digest, "size": digests.size}, digests.diff_id

    def _rootfs(self) -> str:
        """The build state's files, unpacked on first need."""
        return self._materialize(self.state)

    def _materialize(self, state: BuildState) -> str:
        """A state's files in a scratch directory under the store's tmp/ (made once per state)."""
        if state.rootfs is None:
            state.rootfs = self.store.temp_dir(prefix="build-")
            os.chmod(state.rootfs, 0o755)
            for descriptor in state.layers:
                with open(self.store.blob_path(descriptor["digest"]), "rb") as blob:
                    apply_layer(blob, state.rootfs, owners=state.owners)
        return state.rootfs

    def _drop_rootfs(self) -> None:
        """Remove every unpacked state (the current one and those of earlier stages)."""
        for folder in self.scratch:
            shutil.rmtree(folder, ignore_errors=True)
        self.scratch.clear()
        for state in [self.state, *self.stages.values()]:
            if state is not None and state.rootfs is not None:
                shutil.rmtree(state.rootfs, ignore_errors=True)
                state.rootfs = None

    # --- COPY and ADD
    def _copy(self, ins: Instruction) -> None:
        self._copy_or_add(ins, unpack=False)

    def _add(self, ins: Instruction) -> None:
        self._copy_or_add(ins, unpack=True)

    def _copy_or_add(self, ins: Instruction, unpack: bool) -> None:
        unknown = set(ins.flags) - {"chown", "chmod", "link", "from"}
        if unknown:
            raise self.file.error(ins, f"unknown flag --{sorted(unknown)[0]}")
        env = self._expand_env()
        words = ([expand(w, env, self.file.escape) for w in ins.exec_form] if ins.exec_form is not None
                 else shell_words(ins.args, env, self.file.escape))
        if len(words) < 2:
            raise self.file.error(ins, f"want {ins.keyword} SRC... DEST")
        *sources, dest = words
        for s in sources:
            if "://" in s:
                raise self.file.error(ins, f"remote sources are not supported (pykvm builds offline): {s}")
        if ins.heredocs:
            source, sources = self._heredoc_source(ins, sources, env)
        elif "from" in ins.flags:
            source = self._source(ins)
        else:
            source = Source(self.context, self.ignore)
        files = [(s, self._context_files(ins, source, s)) for s in sources]
        chown = expand(ins.flags.get("chown", ""), env)
        chmod = ins.flags.get("chmod")
        workdir = self.state.cfg.get("WorkingDir") or "/"
        dest_path = posixpath.normpath(posixpath.join(workdir, dest))
        if (dest.endswith("/") or dest in (".", "..")) and dest_path != "/":
            dest_path += "/"
        multiple = len(sources) > 1 or any(GLOB_CHARS & set(s) for s in sources)
        if multiple and not dest_path.endswith("/"):
            raise self.file.error(ins, "with several sources (or a wildcard) the destination must end in /")
        key = json.dumps([ins.keyword, dest_path, chown, chmod, unpack, self._content_key(source, files)])

        def mutate(root: str) -> None:
            owner = self._owner(ins, root, chown) if chown else None
            copied: dict[tuple[int, int], str] = {}       # (dev, inode) -> where it went: hard links
            for _, entries in files:
                self._copy_into(root, source, entries, dest_path, owner, chmod, unpack, copied)
        self._layer_step(ins, key, mutate, ins.text)

    def _heredoc_source(self, ins: Instruction, sources: list[str], env: dict) -> tuple[Source, list[str]]:
        """COPY <<NAME DEST: each here-document becomes a file NAME (mode 0644) in a scratch
        directory; an unquoted NAME's body has its variables expanded first."""
        names = []
        for word in sources:
            m = HEREDOC_RE.fullmatch(word)
            if not m:
                raise self.file.error(ins, f"{word!r}: here-documents and files cannot be mixed")
            names.append(m.group("name"))
        folder = self.store.temp_dir(prefix="heredoc-")
        self.scratch.append(folder)
        for doc in ins.heredocs:
            body = expand(doc.content, env, self.file.escape) if doc.expand else doc.content
            path = os.path.join(folder, doc.name)
            Path(path).write_text(body)
            os.chmod(path, 0o644)
        return Source(folder, DockerIgnore("")), names

    def _source(self, ins: Instruction) -> Source:
        """COPY --from=STAGE (a name or index of an earlier FROM) or --from=IMAGE: its files, unpacked."""
        ref = expand(ins.flags["from"], self._expand_env())
        state = self.stages.get(ref.lower())
        if state is None:
            image = self._base_image(ins, ref)
            state = BuildState(image.config, list(image.layers), _key("from", image.manifest_digest))
            self.stages[ref.lower()] = state
        return Source(self._materialize(state), DockerIgnore(""), state.cache_key, state.owners)

    def _context_files(self, ins: Instruction, src: Source, source: str) -> list[tuple[str, str]]:
        """[(path in src.base, path below the source)] for one COPY source, after .dockerignore."""
        import glob
        clean = posixpath.normpath(source.lstrip("/") or ".")
        if clean == ".." or clean.startswith("../"):
            raise self.file.error(ins, f"forbidden path outside the build context: {source}")
        if GLOB_CHARS & set(clean):
            matches = sorted(glob.glob(clean, root_dir=src.base, recursive=False))
        else:
            matches = [clean]
        matches = [m for m in matches if m == "." or not src.ignore.ignored(m)]
        # A source is looked up inside the context as if it were "/": a symlink in the
        # context that points at /etc reads the context's etc, never the host's.  A symlink
        # named as a source is followed, and its copy keeps the name the COPY gave (fsutil's
        # copy: the followed path's content under filepath.Base of the source as named).
        found = [(m, os.path.relpath(secure_join(src.base, m), src.base)) for m in matches]
        found = [(m, real) for m, real in found if os.path.lexists(os.path.join(src.base, real))
                 and (real == "." or not src.ignore.ignored(real))]
        if not found:
            raise self.file.error(ins, f"no such file: {source}")
        out: list[tuple[str, str]] = []
        for named, real in found:
            top = os.path.join(src.base, real)
            if os.path.isdir(top) and not os.path.islink(top):
                out += self._walk_context(src, real)
            else:
                out.append((real, posixpath.basename(named)))
        return out

    def _walk_context(self, src: Source, top: str) -> list[tuple[str, str]]:
        """A context directory and every non-ignored entry below it, as (context path, path below top).

        The directory itself comes first with an empty "below": COPY copies a
        directory's contents, not the directory, but makes the destination.
        """
        out = [(top, "")]
        base = os.path.join(src.base, top)
        may_reinclude = any(not exclude for exclude, _ in src.ignore.rules)
        for dirpath, dirnames, filenames in os.walk(base):
            rel_dir = os.path.relpath(dirpath, src.base)
            for name in dirnames + filenames:
                rel = posixpath.normpath(posixpath.join(rel_dir, name))
                if not src.ignore.ignored(rel):
                    out.append((rel, os.path.relpath(os.path.join(dirpath, name), base)))
            if not may_reinclude:   # an ignored directory hides everything below it
                dirnames[:] = [d for d in dirnames
                               if not src.ignore.ignored(posixpath.normpath(posixpath.join(rel_dir, d)))]
        return sorted(out, key=lambda e: e[1])

    def _content_key(self, src: Source, files: list[tuple[str, list[tuple[str, str]]]]) -> str:
        """sha256 over every source's path, type, mode and content: the COPY part of a cache key."""
        h = hashlib.sha256()
        if src.key:                                   # an earlier stage: its key already names its content
            h.update(src.key.encode())
        for source, entries in files:
            h.update(source.encode() + b"\0")
            for ctx_path, below in entries:
                h.update(f"{ctx_path}\0".encode())
                if src.key:
                    continue
                path = os.path.join(src.base, ctx_path)
                st = os.lstat(path)
                h.update(f"{below}\0{stat.S_IFMT(st.st_mode)}\0{stat.S_IMODE(st.st_mode)}\0".encode())
                if stat.S_ISLNK(st.st_mode):
                    h.update(os.readlink(path).encode())
                elif stat.S_ISREG(st.st_mode):
                    with open(path, "rb") as f:
                        while chunk := f.read(1 << 20):
                            h.update(chunk)
        return h.hexdigest()

    def _copy_into(self, root: str, source: Source, entries, dest: str, owner, chmod, unpack: bool,
                   copied: dict) -> None:
        single_file = len(entries) == 1 and entries[0][1] != ""
        for ctx_path, below in entries:
            src = os.path.join(source.base, ctx_path)
            if below == "":
                _make_dirs(root, secure_join(root, dest), self.state.owners, owner or (0, 0))
                continue
            if single_file and not dest.endswith("/") and not os.path.isdir(secure_join(root, dest)):
                target = dest
            else:
                target = posixpath.join(dest, below)
            if unpack and single_file and _is_archive(src):
                self._unpack(root, src, dest.rstrip("/") or "/", owner)
                continue
            self._copy_entry(root, source, src, target, owner, chmod, copied)

    def _copy_entry(self, root: str, source: Source, src: str, target: str, owner, chmod, copied: dict) -> None:
        """One file as BuildKit's copy makes it (fsutil's copy): a directory, a regular file (a
        second name of an inode already copied becomes a hard link to it), a symlink, or a
        device node; its owner is --chown's, else the stage's file's (COPY --from), else 0:0
        (the build context); extended attributes (file capabilities) come along. BuildKit
        refuses FIFOs and sockets ("unsupported mode"), and so do we."""
        st = os.lstat(src)
        kind = _copy_kind(src, st)
        parent = secure_join(root, posixpath.dirname(target))
        _make_dirs(root, parent, self.state.owners, owner or (0, 0))
        path = os.path.join(parent, posixpath.basename(target))
        if kind == "dir":
            if not os.path.isdir(path):
                _remove_entry(path)
                os.mkdir(path)
        else:
            _remove_entry(path)
            if kind == "file" and st.st_nlink > 1 and (st.st_dev, st.st_ino) in copied:
                os.link(copied[(st.st_dev, st.st_ino)], path)
                return                                   # one inode: its owner and mode are set
            _create_copy(kind, src, path, st)
            copied[(st.st_dev, st.st_ino)] = path
        if owner is None:
            owner = (source.owners.get(src, (st.st_uid, st.st_gid)) if source.owners is not None else (0, 0))
        _chown(path, owner, self.state.owners)
        if kind != "symlink":
            os.chmod(path, int(chmod, 8) if chmod else stat.S_IMODE(st.st_mode))
        copy_xattrs(src, path)

    def _unpack(self, root: str, archive: str, dest: str, owner) -> None:
        target = secure_join(root, dest)
        _make_dirs(root, target, self.state.owners)
        with open(archive, "rb") as f:
            apply_layer(f, target, owners=self.state.owners)
        if owner is not None:
            for dirpath, dirnames, filenames in os.walk(target):
                for name in dirnames + filenames:
                    _chown(os.path.join(dirpath, name), owner, self.state.owners)

    def _owner(self, ins: Instruction, root: str, spec: str) -> tuple[int, int]:
        """--chown=USER[:GROUP]: numbers, or names from the image's /etc/passwd and /etc/group."""
        user, _, group = spec.partition(":")
        uid, primary_gid = self._lookup(ins, root, "/etc/passwd", user, "user")
        gid = self._lookup(ins, root, "/etc/group", group, "group")[0] if group else primary_gid
        return uid, gid

    def _lookup(self, ins: Instruction, root: str, db: str, name: str, what: str) -> tuple[int, int]:
        if name.isdigit():
            return int(name), int(name)
        try:
            lines = Path(secure_join(root, db)).read_text().splitlines()
        except OSError:
            lines = []
        for line in lines:
            fields = line.split(":")
            if len(fields) >= 4 and fields[0] == name:
                number = int(fields[2])
                return (number, int(fields[3])) if what == "user" else (number, number)
        raise self.file.error(ins, f"unknown {what} {name!r} (not in the image's {db})")

    # --- RUN
    def _run(self, ins: Instruction) -> None:
        unknown = set(ins.flags) - {"network"}
        if unknown:
            raise self.file.error(ins, f"unsupported flag --{sorted(unknown)[0]}")
        argv = self._run_argv(ins)
        env = {**self.state.args, **self.state.env()}
        cfg = self.state.cfg
        workdir = cfg.get("WorkingDir") or "/"
        user = cfg.get("User") or ""
        key = json.dumps(["RUN", argv, sorted(env.items()), workdir, user])

        def mutate(root: str) -> None:
            wd = secure_join(root, workdir)
            _make_dirs(root, wd, self.state.owners)
            status = run_step(root, argv, [f"{k}={v}" for k, v in env.items()], workdir, user)
            if status != 0:
                raise self.file.error(ins, f"`{' '.join(argv)}` exited with status {status}")
        self._layer_step(ins, key, mutate, ins.text)


    def _run_argv(self, ins: Instruction) -> list[str]:
        """RUN's command; with here-documents, BuildKit's three cases (Dockerfile reference,
        "Here-Documents"): `RUN <<EOF` alone runs the body as the shell's script, or, when it
        starts with #!, as a program of its own; a command that reads here-documents gets
        them back in its text, for the shell to feed."""
        if not ins.heredocs:
            return self._command(ins)
        if ins.exec_form is not None:
            raise self.file.error(ins, "here-documents need the shell form of RUN")
        only = ins.heredocs[0]
        if len(ins.heredocs) == 1 and HEREDOC_RE.fullmatch(ins.args.strip()):
            if only.content.startswith("#!"):
                # BuildKit mounts the body as an executable file; the shell writes it
                # into the container's /dev (a tmpfs no layer records), then runs it.
                script = f"/dev/pipes/{only.name}"
                writer = (f'mkdir -p /dev/pipes && printf %s "$0" > {script} && chmod 755 {script}'
                          f' && exec {script}')
                return self.state.shell + [writer, only.content]
            return self.state.shell + [only.content]
        text = ins.args + "".join(f"\n{h.content}{h.name}" for h in ins.heredocs)
        return self.state.shell + [text]


def run_step(rootfs: str, argv: list[str], env: list[str], cwd: str, user: str) -> int:
    """Run one RUN command in a container whose root is `rootfs`; returns its exit status."""
    from pykvm.container.image.runconfig import run_build_step     # the runtime: only when a RUN runs
    return run_build_step(rootfs, argv, env=env, cwd=cwd, user=user)


def _duration_ns(text: str, file: Dockerfile, ins: Instruction) -> int:
    """A Go duration ("30s", "1m30s", "500ms") in nanoseconds."""
    units = {"ns": 1, "us": 10**3, "µs": 10**3, "ms": 10**6, "s": 10**9, "m": 60 * 10**9, "h": 3600 * 10**9}
    parts = DURATION_RE.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise file.error(ins, f"{text!r} is not a duration (e.g. 30s, 1m30s)")
    return int(sum(float(n) * units[u] for n, u in parts))


def _read_text(path) -> str:
    """A Dockerfile or .dockerignore: UTF-8 text (as BuildKit reads it), or one clear error."""
    try:
        return Path(path).read_text()
    except OSError as e:
        raise ContainerError(f"cannot read {path}: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise ContainerError(f"{path}: not UTF-8 text (byte {e.object[e.start]:#04x} at offset {e.start})") from None


def _empty_config() -> dict:
    """config.md: the config of an image with no layers yet."""
    return {"architecture": "amd64", "os": "linux",
            "config": {"Env": [DEFAULT_PATH]},
            "rootfs": {"type": "layers", "diff_ids": []}, "history": []}


def _is_archive(path: str) -> bool:
    """ADD unpacks local tar archives (plain, gzip, bzip2, xz)."""
    if not os.path.isfile(path):
        return False
    try:
        with tarfile.open(path, "r:*") as t:
            return t.next() is not None
    except (tarfile.TarError, OSError, EOFError):
        return False


def _make_dirs(root: str, path: str, owners: dict, owner: tuple[int, int] = (0, 0)) -> None:
    """mkdir -p for a path already resolved inside root (mode 0755; the directories it makes
    belong to `owner`: COPY --chown's user, as BuildKit's copy makes them)."""
    rel = os.path.relpath(path, root)
    if rel == ".":
        return
    here = root
    for part in rel.split(os.sep):
        here = os.path.join(here, part)
        if not os.path.lexists(here):
            os.mkdir(here, 0o755)
            _chown(here, owner, owners)
        elif not os.path.isdir(here):
            raise ContainerError(f"{os.path.relpath(here, root)} exists in the image and is not a directory")


def _copy_kind(src: str, st: os.stat_result) -> str:
    """What COPY makes of a source entry: dir, file, symlink or device; a FIFO or a socket is
    refused in one line."""
    mode = st.st_mode
    for test, kind in ((stat.S_ISDIR, "dir"), (stat.S_ISREG, "file"), (stat.S_ISLNK, "symlink"),
                       (stat.S_ISCHR, "device"), (stat.S_ISBLK, "device")):
        if test(mode):
            return kind
    what = "a FIFO (named pipe)" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode) else "special"
    raise ContainerError(f"{os.path.basename(src)} is {what}: COPY copies files, directories, symlinks "
                         "and device nodes only")


def _create_copy(kind: str, src: str, path: str, st: os.stat_result) -> None:
    if kind == "symlink":
        os.symlink(os.readlink(src), path)
    elif kind == "device":
        try:
            os.mknod(path, st.st_mode, st.st_rdev)
        except PermissionError:
            raise ContainerError(f"copying device node {os.path.basename(src)} needs root") from None
    else:
        shutil.copyfile(src, path, follow_symlinks=False)


def _remove_entry(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.unlink(path)


def _chown(path: str, owner: tuple[int, int], owners: dict) -> None:
    try:
        os.lchown(path, *owner)
        owners.pop(path, None)
    except PermissionError:
        owners[path] = owner


def build_image(store: ImageStore, options: BuildOptions) -> Image:
    """Build the Dockerfile in options.context; tag the image options.tag.  Returns it."""
    if options.tag:
        normalize_name(options.tag)                 # refuse a bad tag before doing any work
    return Builder(store, options).run()
