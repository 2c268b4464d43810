"""A parser check for kuma-dp@.service, for hosts where `systemd-analyze verify` is absent (containers, CI).

systemd ignores an unknown key with only a log line, so a typo in a hardening option silently drops the
protection. This reads the unit the way systemd does (sections, `Key=Value`, repeated keys, backslash line
continuation), rejects keys systemd does not know in that section, and checks the promises the package makes:
one instance per dataplane with its env file, run as kuma-dp without capabilities, restart on failure.

Usage: python3 packaging/unitcheck.py UNIT_FILE  (prints one problem a line; exit 1 if any).
"""

from __future__ import annotations

import sys
from pathlib import Path

# Keys systemd 252 accepts in each section (systemd.unit(5), systemd.service(5), systemd.exec(5),
# systemd.kill(5), systemd.resource-control(5)); only the ones a service unit like ours can sensibly use.
_UNIT_KEYS = {
    "Description", "Documentation", "Wants", "Requires", "Requisite", "BindsTo", "PartOf", "Upholds",
    "Conflicts", "Before", "After", "OnFailure", "OnSuccess", "PropagatesReloadTo", "ReloadPropagatedFrom",
    "JoinsNamespaceOf", "RequiresMountsFor", "DefaultDependencies", "StopWhenUnneeded", "RefuseManualStart",
    "RefuseManualStop", "AllowIsolate", "IgnoreOnIsolate", "CollectMode", "FailureAction", "SuccessAction",
    "StartLimitIntervalSec", "StartLimitBurst", "StartLimitAction", "RebootArgument", "SourcePath",
    "ConditionPathExists", "ConditionPathIsDirectory", "ConditionFileNotEmpty", "ConditionVirtualization",
    "ConditionHost", "ConditionKernelCommandLine", "ConditionSecurity", "ConditionCapability",
    "ConditionACPower", "ConditionFirstBoot", "ConditionPathExistsGlob", "ConditionDirectoryNotEmpty",
    "ConditionFileIsExecutable", "ConditionUser", "ConditionGroup", "ConditionControlGroupController",
    "AssertPathExists", "AssertPathIsDirectory", "AssertFileNotEmpty", "AssertFileIsExecutable",
}
_SERVICE_KEYS = {
    # systemd.service
    "Type", "ExitType", "RemainAfterExit", "GuessMainPID", "PIDFile", "BusName", "ExecStart", "ExecStartPre",
    "ExecStartPost", "ExecCondition", "ExecReload", "ExecStop", "ExecStopPost", "RestartSec",
    "TimeoutStartSec", "TimeoutStopSec", "TimeoutAbortSec", "TimeoutSec", "TimeoutStartFailureMode",
    "TimeoutStopFailureMode",
    "RuntimeMaxSec", "RuntimeRandomizedExtraSec", "WatchdogSec", "Restart", "SuccessExitStatus",
    "RestartPreventExitStatus", "RestartForceExitStatus", "RootDirectoryStartOnly", "NonBlocking",
    "NotifyAccess", "Sockets", "FileDescriptorStoreMax", "USBFunctionDescriptors", "USBFunctionStrings",
    "OOMPolicy",
    # systemd.exec
    "WorkingDirectory", "RootDirectory", "RootImage", "MountAPIVFS", "ProtectProc", "ProcSubset",
    "BindPaths", "BindReadOnlyPaths", "User", "Group", "DynamicUser", "SupplementaryGroups", "PAMName",
    "CapabilityBoundingSet", "AmbientCapabilities", "NoNewPrivileges", "SecureBits", "SELinuxContext",
    "AppArmorProfile", "SmackProcessLabel", "LimitCPU", "LimitFSIZE", "LimitDATA", "LimitSTACK", "LimitCORE",
    "LimitRSS", "LimitNOFILE", "LimitAS", "LimitNPROC", "LimitMEMLOCK", "LimitLOCKS", "LimitSIGPENDING",
    "LimitMSGQUEUE", "LimitNICE", "LimitRTPRIO", "LimitRTTIME", "UMask", "CoredumpFilter", "KeyringMode",
    "OOMScoreAdjust", "TimerSlackNSec", "Personality", "IgnoreSIGPIPE", "Nice", "CPUSchedulingPolicy",
    "CPUSchedulingPriority", "CPUSchedulingResetOnFork", "CPUAffinity", "NUMAPolicy", "NUMAMask",
    "IOSchedulingClass", "IOSchedulingPriority", "ProtectSystem", "ProtectHome", "RuntimeDirectory",
    "StateDirectory", "CacheDirectory", "LogsDirectory", "ConfigurationDirectory", "RuntimeDirectoryMode",
    "StateDirectoryMode", "CacheDirectoryMode", "LogsDirectoryMode", "ConfigurationDirectoryMode",
    "RuntimeDirectoryPreserve", "TimeoutCleanSec", "ReadWritePaths", "ReadOnlyPaths", "InaccessiblePaths",
    "ExecPaths", "NoExecPaths", "TemporaryFileSystem", "PrivateTmp", "PrivateDevices", "PrivateNetwork",
    "NetworkNamespacePath", "PrivateIPC", "IPCNamespacePath", "PrivateUsers", "ProtectHostname",
    "ProtectClock", "ProtectKernelTunables", "ProtectKernelModules", "ProtectKernelLogs",
    "ProtectControlGroups", "RestrictAddressFamilies", "RestrictFileSystems", "RestrictNamespaces",
    "LockPersonality", "MemoryDenyWriteExecute", "RestrictRealtime", "RestrictSUIDSGID", "RemoveIPC",
    "PrivateMounts", "MountFlags", "SystemCallFilter", "SystemCallErrorNumber", "SystemCallArchitectures",
    "SystemCallLog", "Environment", "EnvironmentFile", "PassEnvironment", "UnsetEnvironment",
    "StandardInput", "StandardOutput", "StandardError", "StandardInputText", "StandardInputData",
    "LogLevelMax", "LogExtraFields", "LogRateLimitIntervalSec", "LogRateLimitBurst", "LogNamespace",
    "SyslogIdentifier", "SyslogFacility", "SyslogLevel", "SyslogLevelPrefix", "TTYPath", "TTYReset",
    "TTYVHangup", "TTYVTDisallocate", "LoadCredential", "LoadCredentialEncrypted", "SetCredential",
    "SetCredentialEncrypted", "UtmpIdentifier", "UtmpMode",
    # systemd.kill
    "KillMode", "KillSignal", "RestartKillSignal", "SendSIGHUP", "SendSIGKILL", "FinalKillSignal",
    "WatchdogSignal",
    # systemd.resource-control
    "CPUAccounting", "CPUWeight", "StartupCPUWeight", "CPUQuota", "CPUQuotaPeriodSec", "AllowedCPUs",
    "StartupAllowedCPUs", "MemoryAccounting", "MemoryMin", "MemoryLow", "MemoryHigh", "MemoryMax",
    "MemorySwapMax", "TasksAccounting", "TasksMax", "IOAccounting", "IOWeight", "IPAccounting",
    "IPAddressAllow", "IPAddressDeny", "DeviceAllow", "DevicePolicy", "Slice", "Delegate",
    "ManagedOOMSwap", "ManagedOOMMemoryPressure", "ManagedOOMPreference",
}
_INSTALL_KEYS = {"Alias", "WantedBy", "RequiredBy", "Also", "DefaultInstance"}
KNOWN_KEYS = {"Unit": _UNIT_KEYS, "Service": _SERVICE_KEYS, "Install": _INSTALL_KEYS}

_TYPES = {"simple", "exec", "forking", "oneshot", "dbus", "notify", "idle"}
_BOOLEAN = {"1", "yes", "true", "on", "0", "no", "false", "off"}


def parse_unit(text: str) -> dict[str, list[tuple[int, str, str]]]:
    """Sections -> [(line number, key, value)] in file order, repeated keys kept (systemd appends them)."""
    sections: dict[str, list[tuple[int, str, str]]] = {}
    current: str | None = None
    pending = ""
    start = 0
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not pending and (not line or line[0] in "#;"):
            continue
        if line.endswith("\\"):
            if not pending:
                start = lineno
            pending += line[:-1] + " "
            continue
        if pending:
            line, pending = pending + line, ""
        else:
            start = lineno
        if line.startswith("[") and line.endswith("]"):
            current = line[1:-1]
            sections.setdefault(current, [])
            continue
        if current is None:
            raise ValueError(f"line {start}: assignment outside a section")
        key, sep, value = line.partition("=")
        if not sep:
            raise ValueError(f"line {start}: not a Key=Value line: {line!r}")
        sections[current].append((start, key.strip(), value.strip()))
    return sections


def last(section: list[tuple[int, str, str]], key: str) -> str | None:
    """systemd's value for a single-valued key: the last assignment wins."""
    values = [v for _, k, v in section if k == key]
    return values[-1] if values else None


def unit_problems(text: str) -> list[str]:
    """Everything wrong with the unit, one sentence each; empty when it is good."""
    try:
        sections = parse_unit(text)
    except ValueError as exc:
        return [str(exc)]
    problems: list[str] = []
    for name, entries in sections.items():
        known = KNOWN_KEYS.get(name)
        if known is None:
            problems.append(f"unknown section [{name}]")
            continue
        for lineno, key, value in entries:
            if key not in known:
                problems.append(f"line {lineno}: unknown key {key!r} in [{name}] (systemd would ignore it)")
            elif key.startswith(("Protect", "Private", "Restrict", "NoNew", "Lock", "Remove")) and \
                    key not in {"ProtectSystem", "ProtectHome", "ProtectProc", "RestrictAddressFamilies",
                                "RestrictNamespaces", "RestrictFileSystems"} and value not in _BOOLEAN:
                problems.append(f"line {lineno}: {key}={value} is not a boolean")
    service = sections.get("Service", [])
    if not service:
        return [*problems, "no [Service] section"]
    expectations = {
        "User": "kuma-dp",
        "Restart": "on-failure",
        "EnvironmentFile": "/etc/kuma-dp/%i.env",
        "NoNewPrivileges": "yes",
        "CapabilityBoundingSet": "",
    }
    for key, want in expectations.items():
        got = last(service, key)
        if got != want:
            problems.append(f"[Service] {key}={got!r}, want {want!r}")
    unit_type = last(service, "Type")
    if unit_type not in _TYPES:
        problems.append(f"[Service] Type={unit_type!r} is not a service type")
    exec_start = last(service, "ExecStart") or ""
    if not exec_start.lstrip("-@:+!").startswith("/"):
        problems.append(f"[Service] ExecStart={exec_start!r} must start with an absolute path")
    ambient = last(service, "AmbientCapabilities") or ""
    if ambient and ambient != "CAP_NET_BIND_SERVICE":
        problems.append(f"[Service] AmbientCapabilities={ambient!r}: only CAP_NET_BIND_SERVICE is needed")
    if not last(sections.get("Install", []), "WantedBy"):
        problems.append("[Install] has no WantedBy=: `systemctl enable` would do nothing")
    return problems


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: unitcheck.py UNIT_FILE", file=sys.stderr)
        return 2
    problems = unit_problems(Path(argv[1]).read_text())
    for problem in problems:
        print(f"{argv[1]}: {problem}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
