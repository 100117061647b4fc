"""A reader and checker for systemd unit files, independent of systemd itself.

The unit format (systemd.syntax(7)): ``[Section]`` headers, ``Key=value`` lines, keys that
may repeat (each assignment is kept, in order), comments starting with ``#`` or ``;``, and
lines ending in a backslash continued on the next line (the backslash becomes a space).
The key allow-lists come from the systemd.unit, systemd.service, systemd.exec,
systemd.kill, systemd.resource-control and systemd.timer man pages (systemd 252).
"""

from __future__ import annotations

import re
import signal
from dataclasses import dataclass, field


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


class UnitSyntaxError(ValueError):
    """The text is not in the unit file format; the message names the line."""


@dataclass
class Unit:
    sections: dict[str, dict[str, list[str]]] = field(default_factory=dict)

    def values(self, section: str, key: str) -> list[str]:
        """Every assignment of ``key`` in ``section``, in file order (empty when absent)."""
        return self.sections.get(section, {}).get(key, [])

    def get(self, section: str, key: str) -> str | None:
        """The effective value of a single-valued key: its last assignment."""
        found = self.values(section, key)
        return found[-1] if found else None


def parse(text: str) -> Unit:
    unit = Unit()
    current: dict[str, list[str]] | None = None
    pending = ""
    pending_start = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if stripped.startswith(("#", ";")):
            continue  # comments are dropped, even between continued lines
        if pending:
            line, start = pending + " " + stripped, pending_start
        else:
            line, start = stripped, number
        if line.endswith("\\"):
            pending, pending_start = line[:-1].rstrip(), start
            continue
        pending = ""
        if not line:
            continue
        if line.startswith("["):
            if not line.endswith("]") or len(line) < 3:
                raise UnitSyntaxError(f"line {start}: malformed section header {line!r}")
            name = line[1:-1]
            if name in unit.sections:
                raise UnitSyntaxError(f"line {start}: section [{name}] appears twice")
            current = unit.sections.setdefault(name, {})
            continue
        if current is None:
            raise UnitSyntaxError(f"line {start}: assignment before any [Section]")
        key, sep, value = line.partition("=")
        key = key.strip()
        if not sep or not re.fullmatch(r"[A-Za-z][A-Za-z0-9]*", key):
            raise UnitSyntaxError(f"line {start}: expected Key=value, got {line!r}")
        current.setdefault(key, []).append(value.strip())
    if pending:
        raise UnitSyntaxError(f"line {pending_start}: continued line never ends")
    return unit


_CONDITIONS = _words(
    "Architecture Firmware Virtualization Host KernelCommandLine KernelVersion Credential "
    "Environment Security Capability ACPower NeedsUpdate FirstBoot PathExists PathExistsGlob "
    "PathIsDirectory PathIsSymbolicLink PathIsMountPoint PathIsReadWrite PathIsEncrypted "
    "DirectoryNotEmpty FileNotEmpty FileIsExecutable User Group ControlGroupController Memory "
    "CPUs CPUFeature OSRelease MemoryPressure CPUPressure IOPressure"
)

UNIT_KEYS = _words(
    """
    Description Documentation Wants Requires Requisite BindsTo PartOf Upholds Conflicts
    Before After OnFailure OnSuccess PropagatesReloadTo ReloadPropagatedFrom
    PropagatesStopTo StopPropagatedFrom JoinsNamespaceOf RequiresMountsFor OnFailureJobMode
    IgnoreOnIsolate StopWhenUnneeded RefuseManualStart RefuseManualStop AllowIsolate
    DefaultDependencies CollectMode FailureAction SuccessAction FailureActionExitStatus
    SuccessActionExitStatus JobTimeoutSec JobRunningTimeoutSec JobTimeoutAction
    JobTimeoutRebootArgument StartLimitIntervalSec StartLimitBurst StartLimitAction
    RebootArgument SourcePath
    """
) | {f"{kind}{c}" for c in _CONDITIONS for kind in ("Condition", "Assert")}

INSTALL_KEYS = _words("Alias WantedBy RequiredBy Also DefaultInstance")

TIMER_KEYS = _words("""
    OnActiveSec OnBootSec OnStartupSec OnUnitActiveSec OnUnitInactiveSec OnCalendar
    AccuracySec RandomizedDelaySec FixedRandomDelay OnClockChange OnTimezoneChange Unit
    Persistent WakeSystem RemainAfterElapse
    """)

_SERVICE_ONLY = """
    Type ExitType RemainAfterExit GuessMainPID PIDFile BusName ExecStart ExecStartPre
    ExecStartPost ExecCondition ExecReload ExecStop ExecStopPost RestartSec TimeoutStartSec
    TimeoutStopSec TimeoutAbortSec TimeoutSec TimeoutStartFailureMode TimeoutStopFailureMode
    RuntimeMaxSec RuntimeRandomizedExtraSec WatchdogSec Restart SuccessExitStatus
    RestartPreventExitStatus RestartForceExitStatus RootDirectoryStartOnly NonBlocking
    NotifyAccess Sockets FileDescriptorStoreMax USBFunctionDescriptors USBFunctionStrings
    OOMPolicy OpenFile ReloadSignal
"""
_EXEC = """
    WorkingDirectory RootDirectory RootImage RootImageOptions RootHash RootHashSignature
    RootVerity MountAPIVFS ProtectProc ProcSubset BindPaths BindReadOnlyPaths MountImages
    ExtensionImages ExtensionDirectories User Group DynamicUser SupplementaryGroups PAMName
    CapabilityBoundingSet AmbientCapabilities NoNewPrivileges SecureBits SELinuxContext
    AppArmorProfile SmackProcessLabel LimitCPU LimitFSIZE LimitDATA LimitSTACK LimitCORE
    LimitRSS LimitNOFILE LimitAS LimitNPROC LimitMEMLOCK LimitLOCKS LimitSIGPENDING
    LimitMSGQUEUE LimitNICE LimitRTPRIO LimitRTTIME UMask CoredumpFilter KeyringMode
    OOMScoreAdjust TimerSlackNSec Personality IgnoreSIGPIPE Nice CPUSchedulingPolicy
    CPUSchedulingPriority CPUSchedulingResetOnFork CPUAffinity NUMAPolicy NUMAMask
    IOSchedulingClass IOSchedulingPriority ProtectSystem ProtectHome RuntimeDirectory
    StateDirectory CacheDirectory LogsDirectory ConfigurationDirectory RuntimeDirectoryMode
    StateDirectoryMode CacheDirectoryMode LogsDirectoryMode ConfigurationDirectoryMode
    RuntimeDirectoryPreserve TimeoutCleanSec ReadWritePaths ReadOnlyPaths InaccessiblePaths
    ExecPaths NoExecPaths TemporaryFileSystem PrivateTmp PrivateDevices PrivateNetwork
    NetworkNamespacePath PrivateIPC IPCNamespacePath PrivateUsers ProtectHostname
    ProtectClock ProtectKernelTunables ProtectKernelModules ProtectKernelLogs
    ProtectControlGroups RestrictAddressFamilies RestrictFileSystems RestrictNamespaces
    LockPersonality MemoryDenyWriteExecute RestrictRealtime RestrictSUIDSGID RemoveIPC
    PrivateMounts MountFlags SystemCallFilter SystemCallErrorNumber SystemCallArchitectures
    SystemCallLog Environment EnvironmentFile PassEnvironment UnsetEnvironment StandardInput
    StandardOutput StandardError StandardInputText StandardInputData LogLevelMax
    LogExtraFields LogRateLimitIntervalSec LogRateLimitBurst LogFilterPatterns LogNamespace
    SyslogIdentifier SyslogFacility SyslogLevel SyslogLevelPrefix TTYPath TTYReset
    TTYVHangup TTYRows TTYColumns TTYVTDisallocate LoadCredential LoadCredentialEncrypted
    SetCredential SetCredentialEncrypted UtmpIdentifier UtmpMode
"""
_KILL = """
    KillMode KillSignal RestartKillSignal SendSIGHUP SendSIGKILL FinalKillSignal WatchdogSignal
"""
_RESOURCE_CONTROL = """
    CPUAccounting CPUWeight StartupCPUWeight CPUQuota CPUQuotaPeriodSec AllowedCPUs
    StartupAllowedCPUs AllowedMemoryNodes StartupAllowedMemoryNodes MemoryAccounting
    MemoryMin MemoryLow MemoryHigh MemoryMax MemorySwapMax MemoryZSwapMax TasksAccounting
    TasksMax IOAccounting IOWeight StartupIOWeight IODeviceWeight IOReadBandwidthMax
    IOWriteBandwidthMax IOReadIOPSMax IOWriteIOPSMax IODeviceLatencyTargetSec IPAccounting
    IPAddressAllow IPAddressDeny IPIngressFilterPath IPEgressFilterPath BPFProgram
    SocketBindAllow SocketBindDeny RestrictNetworkInterfaces DeviceAllow DevicePolicy Slice
    Delegate DisableControllers ManagedOOMSwap ManagedOOMMemoryPressure
    ManagedOOMMemoryPressureLimit ManagedOOMPreference
"""
SERVICE_KEYS = _words(_SERVICE_ONLY + _EXEC + _KILL + _RESOURCE_CONTROL)

SECTIONS: dict[str, dict[str, frozenset[str]]] = {
    "service": {"Unit": UNIT_KEYS, "Service": SERVICE_KEYS, "Install": INSTALL_KEYS},
    "timer": {"Unit": UNIT_KEYS, "Timer": TIMER_KEYS, "Install": INSTALL_KEYS},
}

BOOLEAN_KEYS = _words("""
    NoNewPrivileges PrivateTmp PrivateDevices PrivateNetwork PrivateIPC PrivateUsers
    PrivateMounts ProtectKernelTunables ProtectKernelModules ProtectKernelLogs
    ProtectControlGroups ProtectClock ProtectHostname LockPersonality MemoryDenyWriteExecute
    RestrictRealtime RestrictSUIDSGID RemoveIPC DynamicUser RemainAfterExit GuessMainPID
    Persistent FixedRandomDelay WakeSystem RemainAfterElapse OnClockChange OnTimezoneChange
    DefaultDependencies IgnoreSIGPIPE SendSIGKILL SendSIGHUP CPUAccounting MemoryAccounting
    TasksAccounting IOAccounting IPAccounting StopWhenUnneeded RefuseManualStart
    RefuseManualStop AllowIsolate MountAPIVFS
    """)
_BOOLEANS = _words("1 yes y true t on 0 no n false f off")

TIME_KEYS = _words("""
    TimeoutStartSec TimeoutStopSec TimeoutAbortSec TimeoutSec RestartSec RuntimeMaxSec
    WatchdogSec AccuracySec RandomizedDelaySec OnActiveSec OnBootSec OnStartupSec
    OnUnitActiveSec OnUnitInactiveSec StartLimitIntervalSec JobTimeoutSec TimeoutCleanSec
    """)
# systemd.time(7): every unit a time span may use.
_TIME_UNITS = _words(
    "usec us µs msec ms seconds second sec s minutes minute min m hours hour hr h "
    "days day d weeks week w months month M years year y"
)
_SPAN = re.compile(
    r"(?:\d+(?:\.\d+)?\s*(?:" + "|".join(sorted(map(re.escape, _TIME_UNITS), key=len,
                                               reverse=True)) + r")?\s*)+"
)

EXIT_STATUS_KEYS = _words("SuccessExitStatus RestartPreventExitStatus RestartForceExitStatus")
PATH_LIST_KEYS = _words("""
    ReadWritePaths ReadOnlyPaths InaccessiblePaths ExecPaths NoExecPaths RequiresMountsFor
    """)
SIGNAL_KEYS = _words("KillSignal FinalKillSignal RestartKillSignal WatchdogSignal")
EXEC_KEYS = _words(
    "ExecStart ExecStartPre ExecStartPost ExecCondition ExecReload ExecStop ExecStopPost"
)

CHOICES: dict[str, frozenset[str]] = {
    "Type": _words("simple exec forking oneshot dbus notify idle"),
    "Restart": _words("no on-success on-failure on-abnormal on-watchdog on-abort always"),
    "KillMode": _words("control-group mixed process none"),
    "ProtectSystem": _BOOLEANS | {"full", "strict"},
    "ProtectHome": _BOOLEANS | {"read-only", "tmpfs"},
    "ProtectProc": _words("noaccess invisible ptraceable default"),
    "ProcSubset": _words("all pid"),
    "DevicePolicy": _words("auto closed strict"),
    "IOSchedulingClass": _words("realtime best-effort idle none 0 1 2 3"),
    "SystemCallArchitectures": _words("native x86 x86-64 x32 arm arm64"),
}
INTEGER_RANGES: dict[str, tuple[int, int]] = {
    "Nice": (-20, 19),
    "IOSchedulingPriority": (0, 7),
    "StartLimitBurst": (0, 2**31 - 1),
}


def is_boolean(value: str) -> bool:
    return value.lower() in _BOOLEANS


def is_time_span(value: str) -> bool:
    return value == "infinity" or (bool(value) and _SPAN.fullmatch(value) is not None)


def is_exit_status(token: str) -> bool:
    if token.isdigit():
        return 0 <= int(token) <= 255
    return token in signal.Signals.__members__


def _exec_path(command: str) -> str:
    # Leading special characters (@ - : + !) change how systemd runs the command.
    return command.split()[0].lstrip("@-:+!") if command.split() else ""


def check_value(key: str, value: str) -> str | None:
    """Why ``value`` is not well formed for ``key``, or None when it is."""
    if value == "" and key in PATH_LIST_KEYS | EXIT_STATUS_KEYS | {"CapabilityBoundingSet",
                                                                   "AmbientCapabilities"}:
        return None  # an empty assignment resets a list (and empties a capability set)
    if key in BOOLEAN_KEYS and not is_boolean(value):
        return f"{key}={value}: not a boolean (yes/no, true/false, on/off, 1/0)"
    if key in TIME_KEYS and not is_time_span(value):
        return f"{key}={value}: not a time span (like 30s, 5min, 1h 30min, or infinity)"
    if key in EXIT_STATUS_KEYS:
        bad = [t for t in value.split() if not is_exit_status(t)]
        if bad:
            return f"{key}={value}: {bad} are neither exit codes (0-255) nor signal names"
    if key in PATH_LIST_KEYS:
        bad = [p for p in value.split() if not p.lstrip("-+").startswith("/")]
        if bad:
            return f"{key}={value}: {bad} are not absolute paths"
    if key in EXEC_KEYS and not _exec_path(value).startswith("/"):
        return f"{key}={value}: the command must be an absolute path"
    if key in SIGNAL_KEYS and value not in signal.Signals.__members__:
        return f"{key}={value}: not a signal name"
    if key in CHOICES and value not in CHOICES[key]:
        return f"{key}={value}: expected one of {sorted(CHOICES[key])}"
    if key in INTEGER_RANGES:
        low, high = INTEGER_RANGES[key]
        if not re.fullmatch(r"-?\d+", value) or not low <= int(value) <= high:
            return f"{key}={value}: expected an integer from {low} to {high}"
    if key == "UMask" and not re.fullmatch(r"0?[0-7]{3}", value):
        return f"UMask={value}: expected an octal mode like 0022"
    if key == "Environment" and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=\S*", value):
        return f"Environment={value}: expected NAME=value"
    if key in {"User", "Group"} and not re.fullmatch(r"[a-z_][a-z0-9_-]*", value):
        return f"{key}={value}: not a valid user or group name"
    if key == "RestrictAddressFamilies" and not all(
        re.fullmatch(r"~?AF_[A-Z0-9]+", t) for t in value.split()
    ):
        return f"RestrictAddressFamilies={value}: expected AF_* names"
    if key == "SystemCallFilter" and not all(
        re.fullmatch(r"~?[@a-z0-9_-]+(?::[A-Z0-9]+)?", t) for t in value.split()
    ):
        return f"SystemCallFilter={value}: expected system call names or @groups"
    return None


def check(unit: Unit, kind: str) -> list[str]:
    """Every problem with ``unit`` as a unit of ``kind`` ("service" or "timer")."""
    allowed = SECTIONS[kind]
    problems: list[str] = []
    for section, keys in unit.sections.items():
        if section not in allowed:
            problems.append(f"[{section}] is not a section of a .{kind} unit")
            continue
        for key, values in keys.items():
            if key not in allowed[section]:
                problems.append(f"{key}= is not a key of [{section}] in a .{kind} unit")
                continue
            problems.extend(p for v in values if (p := check_value(key, v)) is not None)
    return problems
