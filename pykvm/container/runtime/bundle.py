"""OCI runtime bundles: a directory with config.json and a root filesystem.

runtime-spec bundle.md: "a directory containing config.json and the
container's root filesystem".  `load_bundle` reads config.json (config.md,
config-linux.md) into a RunConfig; every field it cannot accept raises a
ConfigError that names the field, e.g. "config.json: process.args must be a
non-empty list of strings".

Read here:
    ociVersion, root.path, root.readonly, hostname, mounts[],
    process.{terminal, user.uid/gid/additionalGids/umask, args, env, cwd,
             capabilities.*, rlimits[], noNewPrivileges, oomScoreAdj},
    linux.{namespaces[], uidMappings[], gidMappings[], cgroupsPath, sysctl,
           resources.{memory.limit, pids.limit, cpu.quota, cpu.period, devices[]},
           maskedPaths[], readonlyPaths[], seccomp (seccomp.py)},
    annotations
    hooks.{prestart, createRuntime, createContainer, startContainer, poststart, poststop}
Refused, naming the field (pykvm cannot enforce them, and a security setting
must never be dropped silently): process.apparmorProfile,
process.selinuxLabel, linux.mountLabel, linux.intelRdt.  Then validate.py
checks the whole RunConfig (ids, paths, limits) before anything is created.

Read here too: domainname, process.{consoleSize, ioPriority}, linux.{personality,
devices[], rootfsPropagation (only pykvm's own: private, rprivate)},
linux.resources.{memory.swap, cpu.shares/cpus/mems}.  The spec's other fields
(blockIO, hugepageLimits, rdma, ...) are refused the same way, each named in UNSUPPORTED.  Keys the spec does not define are ignored, as
config.md "Extensibility" requires; the other platforms' sections (windows, solaris, zos)
do not apply on Linux.
"""
from __future__ import annotations

import json
import os
import re

from pykvm.container.runtime.cgroups import CPU_PERIOD_US, DeviceRule, Limits
from pykvm.container.runtime.hooks import parse_hooks
from pykvm.container.runtime.namespaces import CLONE_FLAGS, IdMap
from pykvm.container.runtime.syscalls import lib
from pykvm.container.runtime.validate import check_id
from pykvm.container.runtime.rootfs import NODE_TYPES, DeviceNode, Mount
from pykvm.container.runtime.config import DEFAULT_UMASK, RunConfig
from pykvm.errors import ConfigError

TYPE_CHECKING = False              # typing.TYPE_CHECKING, without importing typing (3 ms)
if TYPE_CHECKING:
    from pykvm.container.runtime.seccomp import Profile

__all__ = ["load_bundle", "config_from_spec", "limits_from_resources", "bundle_isolation",
           "check_isolation", "ISOLATION_ANNOTATION"]

# How to run a bundle: "container" (namespaces and cgroups on the host's kernel) or "vm" (a
# Linux VM: pykvm.commands.container.oci_vm).  Chosen by `oci create|run --isolation`, else by
# this annotation in config.json (Podman: `--annotation org.pykvm.isolation=vm`), as Kata
# Containers and gVisor read theirs.
ISOLATION_ANNOTATION = "org.pykvm.isolation"
ISOLATIONS = ("container", "vm")
UNLIMITED = -1                    # config-linux.md: a memory (and cpu.quota) value of -1 means no limit
DEVICE_TYPES = ("a", "c", "b")    # config-linux.md "Allowed Device Cgroup": all, char, block
# Fields whose whole point is a security or lifecycle guarantee that pykvm does not
# implement: a config that sets one is refused (runc would apply them).
UNSUPPORTED = {
    ("process", "apparmorProfile"): "pykvm applies no AppArmor profile",
    ("process", "selinuxLabel"): "pykvm applies no SELinux label",
    ("linux", "mountLabel"): "pykvm applies no SELinux label",
    ("linux", "intelRdt"): "pykvm has no Intel RDT support",
    ("linux", "resources", "blockIO"): "pykvm sets no block I/O weights or throttles",
    ("linux", "resources", "hugepageLimits"): "pykvm sets no hugetlb limits",
    ("linux", "resources", "network"): "pykvm sets no net_cls or net_prio values",
    ("linux", "resources", "rdma"): "pykvm sets no RDMA limits",
    ("linux", "resources", "unified"): "pykvm writes no raw cgroup v2 files",
    ("linux", "resources", "memory", "reservation"): "pykvm sets no soft memory limit",
    ("linux", "resources", "memory", "kernel"): "pykvm sets no kernel memory limit",
    ("linux", "resources", "memory", "kernelTCP"): "pykvm sets no kernel TCP memory limit",
    ("linux", "resources", "memory", "swappiness"): "pykvm sets no swappiness",
    ("linux", "resources", "memory", "disableOOMKiller"): "pykvm leaves the OOM killer on",
    ("linux", "resources", "memory", "useHierarchy"): "pykvm sets no memory.use_hierarchy",
    ("linux", "resources", "memory", "checkBeforeUpdate"): "pykvm has no update operation",
    ("linux", "resources", "cpu", "realtimeRuntime"): "pykvm sets no real-time CPU budget",
    ("linux", "resources", "cpu", "realtimePeriod"): "pykvm sets no real-time CPU budget",
    ("linux", "resources", "cpu", "burst"): "pykvm sets no CPU burst",
    ("linux", "resources", "cpu", "idle"): "pykvm sets no SCHED_IDLE cgroup",
    ("linux", "timeOffsets"): "pykvm makes no time namespace",
    ("linux", "netDevices"): "pykvm moves no network device into the container",
    ("linux", "memoryPolicy"): "pykvm sets no NUMA memory policy",
    ("process", "scheduler"): "pykvm sets no scheduling policy",
    ("process", "execCPUAffinity"): "pykvm sets no CPU affinity",
    ("vm",): "pykvm picks the VM's kernel itself (the org.pykvm.isolation annotation or --isolation vm)",
}
IO_CLASSES = {"IOPRIO_CLASS_RT": lib.IOPRIO_CLASS_RT, "IOPRIO_CLASS_BE": lib.IOPRIO_CLASS_BE,
              "IOPRIO_CLASS_IDLE": lib.IOPRIO_CLASS_IDLE}     # config.md "ioPriority"
IO_LEVELS = range(8)                                          # ioprio_set(2): 0 (highest) to 7
PERSONALITIES = {"LINUX": lib.PER_LINUX, "LINUX32": lib.PER_LINUX32}   # config-linux.md "Personality"
CPU_SHARES = range(2, 262145)     # the kernel's cpu.shares range (runc refuses what it would clamp)
CPU_LIST = re.compile(r"\d+(-\d+)?(,\d+(-\d+)?)*")     # cpuset's "0-3,5" (cgroup-v1/cpusets.rst)


def load_bundle(bundle: str) -> RunConfig:
    """Read BUNDLE/config.json into a RunConfig (root.path relative to the bundle)."""
    path = os.path.join(bundle, "config.json")
    try:
        with open(path) as f:
            spec = json.load(f)
    except FileNotFoundError:
        raise ConfigError(f"no config.json in bundle {bundle} (make one with `runc spec`)") from None
    except ValueError as e:                       # JSONDecodeError, or UnicodeDecodeError: not UTF-8
        raise ConfigError(f"{path} is not valid JSON: {e}") from None
    except RecursionError:
        raise ConfigError(f"{path} is nested too deeply to be a runtime config") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path} is not UTF-8 text: {e.reason} at byte {e.start}") from None
    return config_from_spec(spec, os.path.abspath(bundle))


def bundle_isolation(bundle: str, flag: str | None = None) -> str:
    """"container" or "vm": the --isolation `flag` when given, else config.json's
    ISOLATION_ANNOTATION, else "container".  A config.json that cannot be read counts as
    "container" here: load_bundle then says what is wrong with it."""
    if flag is not None:
        return check_isolation(flag, "--isolation")
    try:
        with open(os.path.join(bundle, "config.json")) as f:
            spec = json.load(f)
    except (OSError, ValueError, RecursionError):
        return "container"
    annotations = spec.get("annotations") if isinstance(spec, dict) else None
    value = annotations.get(ISOLATION_ANNOTATION) if isinstance(annotations, dict) else None
    if value is None:
        return "container"
    return check_isolation(value, f"config.json: annotations[{ISOLATION_ANNOTATION!r}]")


def check_isolation(value, what: str) -> str:
    """`value` if it is one of ISOLATIONS, else a ConfigError naming `what`."""
    if value not in ISOLATIONS:
        raise ConfigError(f"{what} is {value!r}: it must be one of {', '.join(ISOLATIONS)}")
    return value


def config_from_spec(spec: dict, bundle: str) -> RunConfig:
    """config.json (already parsed) -> RunConfig."""
    _expect(spec, dict, "config.json")
    _expect(spec.get("ociVersion"), str, "ociVersion")
    process = _expect(spec.get("process"), dict, "process")
    root = _expect(spec.get("root"), dict, "root")
    linux = _expect(spec.get("linux", {}), dict, "linux")
    root_path = _expect(root.get("path"), str, "root.path")
    user = _expect(process.get("user", {}), dict, "process.user")
    _refuse_unsupported(spec)
    _root_propagation(linux.get("rootfsPropagation"))
    return RunConfig(
        args=_strings(process.get("args"), "process.args", nonempty=True),
        rootfs=_root_path(bundle, root_path),
        env=_strings(process.get("env", []), "process.env"),
        cwd=_cwd(process.get("cwd", "/")),
        uid=_int(user.get("uid", 0), "process.user.uid"),
        gid=_int(user.get("gid", 0), "process.user.gid"),
        additional_gids=[_int(g, "process.user.additionalGids[]")
                         for g in _expect(user.get("additionalGids", []), list, "process.user.additionalGids")],
        umask=_int(user.get("umask", DEFAULT_UMASK), "process.user.umask"),
        oom_score_adj=_expect(process.get("oomScoreAdj"), (int, type(None)), "process.oomScoreAdj"),
        sysctl=_expect(linux.get("sysctl", {}), dict, "linux.sysctl"),
        hostname=_expect(spec.get("hostname"), (str, type(None)), "hostname"),
        domainname=_expect(spec.get("domainname"), (str, type(None)), "domainname") or None,
        personality=_personality(linux.get("personality")),
        io_priority=_io_priority(process.get("ioPriority")),
        console_size=_console_size(process.get("consoleSize")),
        device_nodes=_device_nodes(linux.get("devices", [])),
        readonly=bool(root.get("readonly", False)),
        namespaces=_namespaces(linux.get("namespaces", [])),
        uid_mappings=_id_maps(linux.get("uidMappings", []), "linux.uidMappings"),
        gid_mappings=_id_maps(linux.get("gidMappings", []), "linux.gidMappings"),
        limits=_limits(linux.get("resources", {})),
        cgroups_path=_expect(linux.get("cgroupsPath"), (str, type(None)), "linux.cgroupsPath") or None,
        mounts=_mounts(spec.get("mounts", []), bundle),
        masked_paths=_strings(linux.get("maskedPaths", []), "linux.maskedPaths"),
        readonly_paths=_strings(linux.get("readonlyPaths", []), "linux.readonlyPaths"),
        capabilities=_capabilities(process.get("capabilities", {})),
        no_new_privileges=bool(process.get("noNewPrivileges", False)),
        rlimits=_rlimits(process.get("rlimits", [])),
        tty=bool(process.get("terminal", False)),
        init=False,                      # the process is PID 1, as with runc (the default too)
        bundle=bundle,
        annotations=_expect(spec.get("annotations", {}), dict, "annotations"),
        hooks=parse_hooks(spec.get("hooks", {})),
        seccomp=_seccomp(linux.get("seccomp")),
    )


def _refuse_unsupported(spec: dict) -> None:
    """A set field from UNSUPPORTED is an error naming it: never silently ignored."""
    for path, why in UNSUPPORTED.items():
        value = spec
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
        if _is_set(value):
            raise ConfigError(f"config.json: {'.'.join(path)} is set, but {why}: remove it to run "
                              f"without it, or use a runtime that applies it (runc)")


def _seccomp(value) -> Profile | None:
    """linux.seccomp -> seccomp.Profile; none without the field (and then seccomp.py, 4 ms
    of imports, is not imported: engines often ask for no filter)."""
    if value is None:
        return None
    from pykvm.container.runtime.seccomp import parse_profile
    return parse_profile(value)


def _root_path(bundle: str, root_path: str) -> str:
    """root.path, relative to the bundle; no symlink anywhere in it (runc's validate: the
    rootfs "is not an absolute path or is a symlink"), so the root is where it says."""
    if "\0" in root_path:
        raise ConfigError("config.json: root.path contains a NUL byte")
    path = os.path.normpath(os.path.join(os.path.realpath(bundle), root_path))
    if os.path.realpath(path) != path:
        raise ConfigError(f"config.json: root.path {root_path!r} is (or passes through) a symlink, "
                          f"to {os.path.realpath(path)}: give the real path")
    return path


def _expect(value, types, field: str):
    if not isinstance(value, types) or (types is int and isinstance(value, bool)):
        names = "/".join(t.__name__ for t in (types if isinstance(types, tuple) else (types,)))
        raise ConfigError(f"config.json: {field} must be {_article(names)}, not {type(value).__name__}")
    return value


def _article(names: str) -> str:
    return {"dict": "an object", "list": "a list", "str": "a string", "int": "an integer"}.get(names, names)


def _int(value, field: str) -> int:
    _expect(value, int, field)
    if value < 0:
        raise ConfigError(f"config.json: {field} must not be negative")
    return value


def _strings(value, field: str, nonempty: bool = False) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value) \
            or (nonempty and not value):
        raise ConfigError(f"config.json: {field} must be a {'non-empty ' if nonempty else ''}list of strings")
    return list(value)


def _cwd(value) -> str:
    _expect(value, str, "process.cwd")
    if not value.startswith("/"):
        raise ConfigError(f"config.json: process.cwd must be an absolute path, not {value!r}")
    return value


def _namespaces(entries) -> dict[str, str | None]:
    _expect(entries, list, "linux.namespaces")
    out = {}
    for i, entry in enumerate(entries):
        _expect(entry, dict, f"linux.namespaces[{i}]")
        kind = entry.get("type")
        if kind not in CLONE_FLAGS:
            raise ConfigError(f"config.json: linux.namespaces[{i}].type {kind!r} is not one of "
                              f"{', '.join(CLONE_FLAGS)}")
        if kind in out:
            raise ConfigError(f"config.json: linux.namespaces has {kind!r} twice")
        out[kind] = _expect(entry.get("path"), (str, type(None)), f"linux.namespaces[{i}].path") or None
    return out


def _id_maps(entries, field: str) -> list[IdMap]:
    _expect(entries, list, field)
    return [IdMap(_int(e.get("containerID"), f"{field}[{i}].containerID"),
                  _int(e.get("hostID"), f"{field}[{i}].hostID"),
                  _int(e.get("size"), f"{field}[{i}].size"))
            for i, e in enumerate(_expect(x, dict, f"{field}[{i}]") for i, x in enumerate(entries))]


def _limits(resources) -> Limits:
    _expect(resources, dict, "linux.resources")
    memory = _expect(resources.get("memory", {}), dict, "linux.resources.memory")
    pids = _expect(resources.get("pids", {}), dict, "linux.resources.pids")
    cpu = _expect(resources.get("cpu", {}), dict, "linux.resources.cpu")
    limits = Limits(devices=_devices(resources.get("devices", [])))
    # config-linux.md "Memory": "the limit in bytes, or -1 for unlimited memory".  "PIDs" does
    # not say; runc writes "max" for any limit below 0, and podman documents -1: the same here.
    limits.memory = _limit_or_unlimited(memory.get("limit"), "linux.resources.memory.limit")
    limits.pids = _limit_or_unlimited(pids.get("limit"), "linux.resources.pids.limit")
    limits.memory_swap = _swap(memory.get("swap"), limits.memory)
    limits.cpu_shares = _cpu_shares(cpu.get("shares"))
    limits.cpu_cpus, limits.cpu_mems = (_cpu_list(cpu.get(k), f"linux.resources.cpu.{k}") for k in ("cpus", "mems"))
    if cpu.get("quota") is not None and cpu["quota"] != UNLIMITED:
        limits.cpu_quota = _positive(cpu["quota"], "linux.resources.cpu.quota")
        limits.cpu_period = _positive(cpu.get("period", CPU_PERIOD_US), "linux.resources.cpu.period")
    return limits


def _devices(entries) -> list[DeviceRule]:
    """linux.resources.devices: config-linux.md "Allowed Device Cgroup", in order."""
    _expect(entries, list, "linux.resources.devices")
    out = []
    for i, d in enumerate(entries):
        field = f"linux.resources.devices[{i}]"
        _expect(d, dict, field)
        kind = _expect(d.get("type", "a"), str, f"{field}.type")
        access = _expect(d.get("access", "rwm"), str, f"{field}.access")
        if kind not in DEVICE_TYPES:
            raise ConfigError(f"config.json: {field}.type must be one of a, c, b, not {kind!r}")
        if not access or set(access) - set("rwm"):
            raise ConfigError(f"config.json: {field}.access must be letters of 'rwm', not {access!r}")
        major, minor = (None if d.get(k) in (None, -1) else _int(d.get(k), f"{field}.{k}")
                        for k in ("major", "minor"))
        out.append(DeviceRule(_expect(d.get("allow"), bool, f"{field}.allow"), kind, major, minor, access))
    return out


def _limit_or_unlimited(value, field: str) -> int | None:
    """A positive limit, or None (no limit) for an absent field or UNLIMITED."""
    if value is None or value == UNLIMITED:
        return None
    return _positive(value, field)


def _positive(value, field: str) -> int:
    _expect(value, int, field)
    if value <= 0:
        raise ConfigError(f"config.json: {field} must be positive, not {value}")
    return value


def _mounts(entries, bundle: str) -> list[Mount]:
    _expect(entries, list, "mounts")
    out = []
    for i, m in enumerate(entries):
        _expect(m, dict, f"mounts[{i}]")
        dest = _expect(m.get("destination"), str, f"mounts[{i}].destination")
        if not dest.startswith("/"):
            raise ConfigError(f"config.json: mounts[{i}].destination must be absolute, not {dest!r}")
        source = _expect(m.get("source", ""), str, f"mounts[{i}].source")
        kind = _expect(m.get("type", "bind"), str, f"mounts[{i}].type")
        options = _strings(m.get("options", []), f"mounts[{i}].options")
        if _is_set(m.get("uidMappings")) or _is_set(m.get("gidMappings")):
            raise ConfigError(f"config.json: mounts[{i}].uidMappings/gidMappings are set, but pykvm "
                              f"makes no id-mapped mounts: remove them to run without them")
        if (kind == "bind" or "bind" in options or "rbind" in options) and not os.path.isabs(source):
            source = os.path.join(bundle, source)
        out.append(Mount(dest, kind, source, options))
    return out


def _capabilities(value) -> dict[str, list[str]]:
    _expect(value, dict, "process.capabilities")
    out = {}
    for key in ("bounding", "effective", "permitted", "inheritable", "ambient"):
        out[key] = _strings(value.get(key, []), f"process.capabilities.{key}")
    from pykvm.container.runtime.capabilities import cap_numbers
    for key, names in out.items():
        try:
            cap_numbers(names)
        except ConfigError as e:
            raise ConfigError(f"config.json: process.capabilities.{key}: {e}") from None
    return out


def _rlimits(entries) -> list[tuple[str, int, int]]:
    _expect(entries, list, "process.rlimits")
    import resource
    out = []
    for i, r in enumerate(entries):
        _expect(r, dict, f"process.rlimits[{i}]")
        name = _expect(r.get("type"), str, f"process.rlimits[{i}].type")
        if not hasattr(resource, name):
            raise ConfigError(f"config.json: process.rlimits[{i}].type {name!r} is not an rlimit")
        out.append((name, _int(r.get("soft"), f"process.rlimits[{i}].soft"),
                    _int(r.get("hard"), f"process.rlimits[{i}].hard")))
    return out


def _swap(value, memory: int | None) -> int | None:
    """linux.resources.memory.swap: memory+swap in bytes, or UNLIMITED; 0 or absent: None
    (pykvm's default then: no swap past the memory limit)."""
    if value in (None, 0):
        return None
    field = "linux.resources.memory.swap"
    _expect(value, int, field)
    if memory is None:
        raise ConfigError(f"config.json: {field} needs linux.resources.memory.limit (it is memory + swap)")
    if value != UNLIMITED and value < memory:
        raise ConfigError(f"config.json: {field} {value} is below memory.limit {memory}: "
                          f"it counts memory + swap, so it must be at least the memory limit")
    return value


def _cpu_shares(value) -> int | None:
    """linux.resources.cpu.shares: a relative weight; 0 or absent: the kernel's default."""
    if value in (None, 0):
        return None
    _expect(value, int, "linux.resources.cpu.shares")
    if value not in CPU_SHARES:
        raise ConfigError(f"config.json: linux.resources.cpu.shares {value} is out of the kernel's "
                          f"range {CPU_SHARES.start}..{CPU_SHARES.stop - 1}")
    return value


def _cpu_list(value, field: str) -> str | None:
    """linux.resources.cpu.cpus / mems: a cpuset list such as "0-3,5"; "" or absent: the parent's."""
    if value in (None, ""):
        return None
    if not isinstance(value, str) or not CPU_LIST.fullmatch(value):
        raise ConfigError(f"config.json: {field} must be a list such as \"0-3,5\", not {value!r}")
    return value


def _personality(value) -> int | None:
    """linux.personality: the execution domain; the spec defines no flags yet."""
    if value is None:
        return None
    _expect(value, dict, "linux.personality")
    domain = value.get("domain")
    if domain not in PERSONALITIES:
        raise ConfigError(f"config.json: linux.personality.domain must be one of "
                          f"{', '.join(PERSONALITIES)}, not {domain!r}")
    if _strings(value.get("flags", []), "linux.personality.flags"):
        raise ConfigError("config.json: linux.personality.flags is set, but the spec defines no "
                          "flags (and pykvm applies none): remove them")
    return PERSONALITIES[domain]


def _io_priority(value) -> tuple[int, int] | None:
    """process.ioPriority: (class, level) for ioprio_set(2)."""
    if value is None:
        return None
    _expect(value, dict, "process.ioPriority")
    name, level = value.get("class"), value.get("priority", 0)
    if name not in IO_CLASSES:
        raise ConfigError(f"config.json: process.ioPriority.class must be one of "
                          f"{', '.join(IO_CLASSES)}, not {name!r}")
    if _int(level, "process.ioPriority.priority") not in IO_LEVELS:
        raise ConfigError(f"config.json: process.ioPriority.priority {level} is out of range 0..7")
    return IO_CLASSES[name], level


def _console_size(value) -> tuple[int, int] | None:
    """process.consoleSize: the pty's first (rows, columns); only with a terminal."""
    if value is None:
        return None
    _expect(value, dict, "process.consoleSize")
    return tuple(_int(value.get(k), f"process.consoleSize.{k}") for k in ("height", "width"))


def _root_propagation(value) -> None:
    """linux.rootfsPropagation: pykvm makes the container's mounts rprivate (rootfs.py step 1)
    and applies nothing else; another value (runc's default is rslave) is refused."""
    if value in (None, "", "private", "rprivate"):
        return
    raise ConfigError(f"config.json: linux.rootfsPropagation is {value!r}, but pykvm's container "
                      f"mounts are always rprivate: remove it or say \"rprivate\"")


def _device_nodes(entries) -> list[DeviceNode]:
    """linux.devices: config-linux.md "Devices"; pykvm makes them in /dev only (runc anywhere
    in the rootfs, which would leave device nodes in the bundle's directory)."""
    _expect(entries, list, "linux.devices")
    out = []
    for i, d in enumerate(entries):
        field = f"linux.devices[{i}]"
        _expect(d, dict, field)
        path = _expect(d.get("path"), str, f"{field}.path")
        kind = d.get("type")
        if kind not in NODE_TYPES:
            raise ConfigError(f"config.json: {field}.type must be one of {', '.join(NODE_TYPES)}, not {kind!r}")
        if "\0" in path or os.path.normpath(path) != path or not path.startswith("/dev/"):
            raise ConfigError(f"config.json: {field}.path must be a plain absolute path under /dev/, not {path!r}")
        numbers = [0, 0] if kind == "p" else [_int(d.get(k), f"{field}.{k}") for k in ("major", "minor")]
        mode = _int(d.get("fileMode", 0o666), f"{field}.fileMode")
        if mode > 0o777:
            raise ConfigError(f"config.json: {field}.fileMode {mode:#o} has bits beyond the permissions (0777)")
        ids = [check_id(_int(d.get(k, 0), f"{field}.{k}"), f"config.json: {field}.{k}") for k in ("uid", "gid")]
        out.append(DeviceNode(path, kind, *numbers, mode, *ids))
    return out


def _is_set(value) -> bool:
    """A field with a value: an object counts when one of its fields is set or names an
    object (netDevices {"eth1": {}}); Docker writes "blockIO": {} and "disableOOMKiller":
    false for "none"."""
    if isinstance(value, dict):
        return any(isinstance(v, dict) or _is_set(v) for v in value.values())
    return value not in (None, "", []) and value is not False
def limits_from_resources(resources) -> Limits:
    """linux.resources on its own, as `runc update --resources FILE` reads it."""
    return _limits(resources)
