"""The iptables edge: find the binaries, pick nft or legacy as Kuma does, apply atomically, roll back.

Everything that runs a process lives here; the rules come from `builder` and the transactions from `state`,
both pure. Probes run concurrently (each iptables process costs a few ms; the install budget is 150 ms).
The environment the binaries are looked up in and run with (PATH, XTABLES_LOCKFILE, ...) is passed in by
the caller, never read from the process here, and travels with the `Executables` found in it.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from iptables.config import TransparentProxyConfig
from iptables.state import SavedTable, parse_save

log = logging.getLogger(__name__)

FALLBACK_DIRS = ("/usr/sbin", "/sbin", "/usr/bin", "/bin")
VERSION_RE = re.compile(r"^ip6?tables[\w-]*? v(\d+(?:\.\d+)+)(?: \((.*?)\))?")
MODULES = ("owner", "tcp", "udp", "comment", "conntrack", "multiport")
BUILTIN_CHAINS = {"PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"}


class BackendError(RuntimeError):
    """An install/uninstall failure, worded for the operator (which binary, which line, what to do)."""


@dataclass(frozen=True)
class Executables:
    family: int
    mode: str  # "nft" | "legacy"
    iptables: str
    save: str
    restore: str
    #: the environment they run with; None inherits this process's
    env: Mapping[str, str] | None = field(default=None, compare=False, repr=False)

    def restore_argv(self, cfg: TransparentProxyConfig | None, *, noflush: bool = True) -> list[str]:
        argv = [self.restore]
        if noflush:
            argv.append("--noflush")
        if self.mode == "legacy" and cfg is not None:
            argv.append(f"--wait={cfg.wait}")
            if cfg.wait_interval:
                argv.append(f"--wait-interval={cfg.wait_interval}")
        return argv


@dataclass
class Detected:
    v4: Executables
    v6: Executables | None
    saved4: dict[str, SavedTable]
    saved6: dict[str, SavedTable] | None
    modules: frozenset[str] = field(default_factory=frozenset)
    warnings: list[str] = field(default_factory=list)

    def family(self, family: int) -> tuple[Executables, dict[str, SavedTable]]:
        """The executables and saved tables of family 4 or 6, which must have been detected."""
        exe, saved = (self.v4, self.saved4) if family == 4 else (self.v6, self.saved6)
        assert exe is not None and saved is not None
        return exe, saved


def _run_many(
    argvs: Sequence[Sequence[str]], env: Mapping[str, str] | None = None
) -> list[tuple[int, str, str]]:
    """Start every probe at once, then collect: N probes cost about one."""
    procs = []
    for argv in argvs:
        try:
            procs.append(
                subprocess.Popen(
                    list(argv),
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                    env=dict(env) if env is not None else None,
                )
            )
        except OSError as exc:
            procs.append(exc)  # type: ignore[arg-type]
    out = []
    for p in procs:
        if isinstance(p, OSError):
            out.append((127, "", str(p)))
            continue
        so, se = p.communicate()
        out.append((p.returncode, so, se))
    return out


def _find(name: str, env: Mapping[str, str]) -> str | None:
    found = shutil.which(name, path=env.get("PATH", os.defpath))
    if found:
        return found
    for d in FALLBACK_DIRS:
        p = os.path.join(d, name)
        if os.access(p, os.X_OK):
            return p
    return None


def version_mode(output: str) -> str | None:
    """`iptables v1.8.9 (nf_tables)` -> nft; `(legacy)` or no suffix -> legacy (Kuma's regex)."""
    if "unrecognized option '--version'" in output:
        return "legacy"
    m = VERSION_RE.search(output.strip().splitlines()[0] if output.strip() else "")
    if not m:
        return None
    return "nft" if m.group(2) == "nf_tables" else "legacy"


def _candidates(family: int, env: Mapping[str, str]) -> list[Executables]:
    """Both sets if they exist: `iptables-{nft,legacy}{,-save,-restore}`, else plain `iptables*` by version."""  # noqa: E501
    base = "iptables" if family == 4 else "ip6tables"
    sets: list[Executables] = []
    plain = [_find(f"{base}{s}", env) for s in ("", "-save", "-restore")]
    for mode in ("nft", "legacy"):
        paths = [_find(f"{base}-{mode}{s}", env) for s in ("", "-save", "-restore")]
        if all(paths):
            sets.append(Executables(family, mode, paths[0], paths[1], paths[2], env))  # type: ignore[arg-type]
    if not sets and all(plain):
        outs = _run_many([[p, "--version"] for p in plain], env)  # type: ignore[list-item]
        modes = {version_mode(o + e) for _, o, e in outs}
        if len(modes) == 1 and None not in modes:
            sets.append(Executables(family, modes.pop(), plain[0], plain[1], plain[2], env))  # type: ignore[arg-type]
    return sets


def _from_config(family: int, given: Mapping[str, str], env: Mapping[str, str]) -> Executables | None:
    base = "iptables" if family == 4 else "ip6tables"
    if base not in given:
        return None
    paths = [given[base], given[f"{base}-save"], given[f"{base}-restore"]]
    outs = _run_many([[paths[0], "--version"]], env)
    mode = version_mode(outs[0][1] + outs[0][2]) or "legacy"
    return Executables(family, mode, *paths, env=env)


def _has_rules(tables: dict[str, SavedTable]) -> bool:
    return any(t.rules or any(c not in BUILTIN_CHAINS for c in t.chain_names()) for t in tables.values())


def detect(cfg: TransparentProxyConfig, *, want_v6: bool, env: Mapping[str, str]) -> Detected:
    """Kuma's choice of executables plus our datapath check: a set whose nat table fails here is skipped.

    Kuma's choice (`pkg/transparentproxy/config/config_executables.go` in kumahq/kuma): the given
    `--iptables-executables`, else nft or legacy, preferring the one that already has rules, nft on a tie.
    `env` is the environment to look the binaries up in (its PATH) and to run them with.
    """
    env = dict(env)
    warnings: list[str] = []
    given4 = _from_config(4, cfg.iptables_executables, env)
    cands = [given4] if given4 else _candidates(4, env)
    if not cands:
        raise BackendError(
            "no iptables executables found (looked for iptables-nft, iptables-legacy and iptables in $PATH, "
            "/usr/sbin, /sbin, /usr/bin, /bin): install iptables or pass --iptables-executables"
        )
    probes = []
    for c in cands:
        probes += [[c.save], [c.save, "-t", "nat"]]
    results = _run_many(probes, env)
    usable: list[tuple[Executables, dict[str, SavedTable], bool]] = []
    for i, c in enumerate(cands):
        (rc_all, out_all, err_all), (rc_nat, _, err_nat) = results[2 * i], results[2 * i + 1]
        if rc_all != 0 or rc_nat != 0:
            log.info("event=backend_unusable mode=%s err=%r", c.mode, (err_all or err_nat).strip())
            continue
        tables = parse_save(out_all)
        usable.append((c, tables, _has_rules(tables)))
    if not usable:
        raise BackendError(
            f"no working iptables backend: the nat table is unusable with {', '.join(c.save for c in cands)} "
            "(is the nat/nf_tables kernel module available in this network namespace?)"
        )
    chosen = _choose(usable, warnings)
    v4, saved4 = chosen
    mod_results = _run_many([[v4.iptables, "-m", m, "-h"] for m in MODULES], env)
    modules = frozenset(m for m, (rc, _, _) in zip(MODULES, mod_results, strict=True) if rc == 0)
    missing = {"tcp", "owner"} - modules
    if missing:
        raise BackendError(
            f"{v4.iptables} lacks the required match module(s) {', '.join(sorted(missing))}: "
            "install the xtables extensions (iptables package) for this kernel"
        )

    v6: Executables | None = None
    saved6: dict[str, SavedTable] | None = None
    if want_v6:
        given6 = _from_config(6, cfg.iptables_executables, env)
        if given6:
            c6: Executables | None = given6
        else:
            c6 = next((c for c in _candidates(6, env) if c.mode == v4.mode), None)
        if c6 is None:
            warnings.append(
                f"no ip6tables executables matching {v4.mode} mode found: installing IPv4 rules only"
            )
        else:
            (rc_all, out_all, err_all), (rc_nat, _, _) = _run_many([[c6.save], [c6.save, "-t", "nat"]], env)
            if rc_all == 0 and rc_nat == 0:
                v6, saved6 = c6, parse_save(out_all)
            else:
                warnings.append(
                    f"IPv6 nat table unusable ({err_all.strip() or rc_nat}): installing IPv4 rules only"
                )
    return Detected(v4, v6, saved4, saved6, modules, warnings)


def _choose(
    usable: list[tuple[Executables, dict[str, SavedTable], bool]], warnings: list[str]
) -> tuple[Executables, dict[str, SavedTable]]:
    if len(usable) == 1:
        return usable[0][0], usable[0][1]
    with_rules = [u for u in usable if u[2]]
    by_mode = {u[0].mode: u for u in usable}
    if len(with_rules) > 1:
        docker = [u for u in with_rules if any("DOCKER_OUTPUT" in t.chain_names() for t in u[1].values())]
        pick = docker[0] if docker else by_mode.get("nft", with_rules[0])
        warnings.append(
            f"conflicting iptables modes detected: both nft and legacy have rules; using {pick[0].mode}"
        )
        return pick[0], pick[1]
    if len(with_rules) == 1 and with_rules[0][0].mode == "legacy":
        return with_rules[0][0], with_rules[0][1]
    pick = by_mode.get("nft", usable[0])
    return pick[0], pick[1]


# ----------------------------------------------------------------------------------------------------
# Applying

_LINE_RE = re.compile(r"line:? (\d+)")


def failing_line(stderr: str, text: str) -> str:
    """iptables-restore's multi-line complaint -> one line naming the rule it choked on, not a number."""
    useful = [
        ln.strip()
        for ln in stderr.splitlines()
        if ln.strip() and not ln.startswith("Try `") and not ln.startswith("Error occurred at line")
    ]
    reason = "; ".join(useful) or "no error text"
    m = _LINE_RE.search(stderr)
    if not m:
        return reason
    n = int(m.group(1))
    lines = text.splitlines()
    rule = lines[n - 1] if 0 < n <= len(lines) else "?"
    return f"line {n} `{rule}`: {reason}"


def restore(exe: Executables, text: str, cfg: TransparentProxyConfig | None, *, noflush: bool = True) -> None:
    argv = exe.restore_argv(cfg, noflush=noflush)
    try:
        proc = subprocess.run(argv, input=text, capture_output=True, text=True, timeout=300, env=exe.env)
    except OSError as exc:
        raise BackendError(f"cannot run {argv[0]}: {exc.strerror or exc}") from exc
    if proc.returncode != 0:
        where = failing_line(proc.stderr, text)
        raise BackendError(f"{os.path.basename(argv[0])} failed (exit {proc.returncode}) at {where}")


def save(exe: Executables) -> dict[str, SavedTable]:
    return parse_save(save_text(exe))


def save_text(exe: Executables) -> str:
    proc = subprocess.run([exe.save], capture_output=True, text=True, timeout=60, env=exe.env)
    if proc.returncode != 0:
        raise BackendError(f"{exe.save} failed (exit {proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout


def drop_bare_tables(exe: Executables, names: Sequence[str]) -> list[str]:
    """iptables-nft only: delete those of `names` that are now bare (no rules, built-in ACCEPT chains).

    iptables-nft creates a table the first time a rule goes into it and has no command that deletes one, so
    without this an install, rolled back or uninstalled, leaves e.g. an empty `raw` table that was not there
    before. The table is deleted over nfnetlink (NFT_MSG_DELTABLE) right after a save shows it bare.
    iptables-legacy tables cannot be deleted from user space; a bare one filters nothing. Returns the names
    deleted.
    """
    if exe.mode != "nft" or not names:
        return []
    from iptables.state import is_bare

    now = save(exe)
    bare = [n for n in names if n in now and is_bare(now[n])]
    if not bare:
        return []
    from pyroute2.nftables.main import NFTables  # heavy (0.5 s, 17 MB): only when there is a table to delete

    family = socket.AF_INET if exe.family == 4 else socket.AF_INET6  # NFPROTO_IPV4 = 2, NFPROTO_IPV6 = 10
    dropped = []
    try:
        with NFTables(nfgen_family=family) as nft:
            for name in bare:
                nft.table("del", name=name)
                dropped.append(name)
    except Exception as exc:  # netlink errors come as NetlinkError or OSError; both mean "left in place"
        tables = ", ".join(bare)
        raise BackendError(f"cannot delete the empty IPv{exe.family} table(s) {tables}: {exc}") from exc
    return dropped


def rollback(
    exe: Executables, before: dict[str, SavedTable], text: str, cfg: TransparentProxyConfig | None
) -> None:
    """Put the tables `text` touched back as they were in `before`.

    Tables that existed are restored whole (flush mode, only those tables); tables the transaction created
    lose our lines and, with iptables-nft, are deleted again (`drop_bare_tables`).
    """
    from iptables.state import restore_text, tables_in, uninstall_transaction

    touched = tables_in(text)
    existing = {name: before[name] for name in touched if name in before}
    if existing:
        restore(exe, restore_text(existing), cfg, noflush=False)
    created = [name for name in touched if name not in before]
    now = save(exe)
    leftover = uninstall_transaction({name: now[name] for name in created if name in now})
    if leftover:
        restore(exe, leftover, cfg)
    drop_bare_tables(exe, created)


def _undo(
    attempted: Sequence[tuple[Executables, dict[str, SavedTable], str]], cfg: TransparentProxyConfig
) -> list[str]:
    """Roll back every family a failed apply touched; return what could not be put back (empty = all).

    Every family is tried even when one fails, and each is checked against its save from before, so the
    caller reports what is really there. A family whose restore failed atomically (iptables-nft commits a
    whole input or nothing) is found unchanged and left alone, which also spares a broken binary a second run.
    """
    from iptables.state import differing_tables, is_ours, tables_in

    problems = []
    for exe, before, text in reversed(attempted):
        legacy = exe.mode == "legacy"
        touched = tables_in(text)
        failure = ""
        try:
            if not differing_tables(before, save(exe), touched, bare_equals_absent=legacy):
                continue
            rollback(exe, before, text, cfg)
        except BackendError as exc:
            failure = f" (rollback failed: {exc})"
        try:
            after = save(exe)
        except BackendError as exc:
            problems.append(f"IPv{exe.family}: cannot read the rules back{failure}: {exc}")
            continue
        differ = differing_tables(before, after, touched, bare_equals_absent=legacy)
        if differ:
            ours = sum(1 for t in after.values() for r in t.rules if is_ours(r))
            tables = ", ".join(differ)
            problems.append(
                f"IPv{exe.family} table(s) {tables} differ from before ({ours} rules of ours){failure}"
            )
    return problems


def apply_transactions(
    steps: Sequence[tuple[Executables, dict[str, SavedTable], str]],
    cfg: TransparentProxyConfig,
    *,
    sleep: float | None = None,
    what: str = "install",
) -> int:
    """Apply each family's transaction; on failure roll every family back and retry (Kuma: 4 x 2 s).

    Returns the number of attempts used. The error raised says what state the rules are in, checked, not
    assumed: "left as they were" only when every family's save matches its save from before; otherwise which
    tables still differ, and no further retry (a retry would start from a state nobody saved).
    """
    retries = cfg.retry.max_retries
    pause = cfg.retry.sleep_between_retries if sleep is None else sleep
    last: BackendError | None = None
    for attempt in range(retries + 1):
        attempted: list[tuple[Executables, dict[str, SavedTable], str]] = []
        try:
            for exe, before, text in steps:
                if not text:
                    continue
                attempted.append((exe, before, text))
                restore(exe, text, cfg)
            return attempt + 1
        except BackendError as exc:
            last = exc
            problems = _undo(attempted, cfg)
            if problems:
                raise BackendError(
                    f"{exc}; ROLLBACK INCOMPLETE: {'; '.join(problems)}: run `kuma-dp transparent-proxy "
                    "uninstall` (with the same --iptables-executables) to remove our rules"
                ) from exc
            log.info("event=apply_failed attempt=%d error=%r", attempt + 1, str(exc))
            if attempt < retries:
                time.sleep(pause)
    assert last is not None
    raise BackendError(f"{last} (rules left as they were before this {what})")
