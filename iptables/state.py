"""Pure functions over `iptables-save` text: ownership, install/uninstall transactions, plan diffs.

Ownership is Kuma's (`IptablesChainsPrefix` and `IptablesRuleCommentPrefix` in
`pkg/transparentproxy/consts/consts.go`, kumahq/kuma v2.14.3): a line is ours when it names a `KUMA_MESH`
chain or carries the `kuma/mesh/transparent/proxy` comment prefix, so Kuma's own uninstall removes what we
install and vice versa.
Install and uninstall are each ONE `iptables-restore --noflush` input per family: deleting our old rules,
creating-or-flushing our chains and adding the new rules commit together, so a failure never leaves half a
ruleset.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from iptables.builder import BUILTIN_ORDER, CHAIN_PREFIX, COMMENT_PREFIX, TABLE_ORDER, Ruleset, render_table

COMMENT_MARK = COMMENT_PREFIX.rstrip("/")


@dataclass
class SavedTable:
    name: str
    #: `:CHAIN POLICY [c]` lines, in order
    chains: list[str] = field(default_factory=list)
    #: `-A ...` lines, in order
    rules: list[str] = field(default_factory=list)

    def chain_names(self) -> list[str]:
        return [c[1:].split()[0] for c in self.chains]


def parse_save(text: str) -> dict[str, SavedTable]:
    """`iptables-save` output -> tables (comments and COMMIT dropped; order kept)."""
    tables: dict[str, SavedTable] = {}
    cur: SavedTable | None = None
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        if line.startswith("*"):
            cur = tables.setdefault(line[1:].strip(), SavedTable(line[1:].strip()))
        elif line == "COMMIT":
            cur = None
        elif cur is not None and line.startswith(":"):
            cur.chains.append(line)
        elif cur is not None and line.startswith("-A "):
            cur.rules.append(line)
    return tables


def is_ours(line: str) -> bool:
    return CHAIN_PREFIX in line or COMMENT_MARK in line


def has_ours(tables: dict[str, SavedTable]) -> bool:
    return any(is_ours(r) for t in tables.values() for r in t.rules) or any(
        c.startswith(CHAIN_PREFIX) for t in tables.values() for c in t.chain_names()
    )


def foreign_chains(tables: dict[str, SavedTable]) -> list[str]:
    """`KUMA_MESH*` chains whose rules carry none of Kuma's comments: not ours (or comments disabled)."""
    out = []
    for t in tables.values():
        ours = [c for c in t.chain_names() if c.startswith(CHAIN_PREFIX)]
        has_rules = any(r.split()[1].startswith(CHAIN_PREFIX) for r in t.rules)
        if ours and has_rules and not any(COMMENT_MARK in r for r in t.rules):
            out += [f"{t.name}/{c}" for c in ours]
    return out


def _removal_lines(t: SavedTable, keep_chains: set[str]) -> tuple[list[str], list[str], list[str]]:
    """(chain declarations to flush, -D lines for our rules in other chains, -X lines for chains to drop)."""
    ours = [c for c in t.chain_names() if c.startswith(CHAIN_PREFIX)]
    declare = [f":{c} - [0:0]" for c in ours]
    deletes = ["-D" + r[2:] for r in t.rules if is_ours(r) and not r.split()[1].startswith(CHAIN_PREFIX)]
    drops = [f"-X {c}" for c in ours if c not in keep_chains]
    return declare, deletes, drops


def install_transaction(saved: dict[str, SavedTable], ruleset: Ruleset, *, comments: bool) -> str:
    """One `--noflush` input: remove our old rules, create-or-flush our chains, add the new rules."""
    new = {t.name: t for t in ruleset.tables}
    blocks = []
    for name in TABLE_ORDER + tuple(sorted(set(saved) - set(TABLE_ORDER))):
        old = saved.get(name)
        table = new.get(name)
        if old is None and table is None:
            continue
        keep = set(table.chains) if table else set()
        declare, deletes, drops = _removal_lines(old, keep) if old else ([], [], [])
        if table is None and not (declare or deletes):
            continue
        lines = [f"*{name}"]
        declared = {d[1:].split()[0] for d in declare}
        lines += declare
        if table:
            lines += [f":{c} - [0:0]" for c in table.chains if c not in declared]
        lines += deletes
        lines += drops
        if table:
            body = render_table(table, comments=comments).splitlines()[1:-1]
            lines += [b for b in body if not b.startswith("-N ")]
        lines.append("COMMIT")
        blocks.append("\n".join(lines))
    return "\n".join(blocks) + "\n" if blocks else ""


def uninstall_transaction(saved: dict[str, SavedTable]) -> str:
    """Exactly our lines out, user rules untouched; empty when there is nothing of ours."""
    blocks = []
    for name, t in saved.items():
        declare, deletes, drops = _removal_lines(t, set())
        if not (declare or deletes):
            continue
        blocks.append("\n".join([f"*{name}", *declare, *deletes, *drops, "COMMIT"]))
    return "\n".join(blocks) + "\n" if blocks else ""


def restore_text(saved: dict[str, SavedTable]) -> str:
    """A flush-mode restore input that puts the listed tables back as they were (used for rollback)."""
    blocks = []
    for name, t in saved.items():
        blocks.append("\n".join([f"*{name}", *t.chains, *t.rules, "COMMIT"]))
    return "\n".join(blocks) + "\n" if blocks else ""


def is_bare(t: SavedTable) -> bool:
    """Only built-in chains, each with policy ACCEPT, and no rules: a table that filters and rewrites nothing.

    iptables-nft creates such a table the first time a rule goes into it and never removes it again, so a
    bare table after our rules are gone is one our install created (see `backend.drop_bare_tables`).
    """
    return not t.rules and all(
        c[1:].split()[0] in BUILTIN_ORDER and c.split()[1] == "ACCEPT" for c in t.chains
    )


def tables_in(text: str) -> list[str]:
    """The tables a restore input touches (`*nat` ... `COMMIT` blocks), in order."""
    return [line[1:].strip() for line in text.splitlines() if line.startswith("*")]


def _content(t: SavedTable) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """A table's chains (policy kept, packet counters dropped) and rules: what must match after a rollback."""
    return tuple(" ".join(c.split()[:2]) for c in t.chains), tuple(t.rules)


def differing_tables(
    before: dict[str, SavedTable],
    after: dict[str, SavedTable],
    names: Iterable[str],
    *,
    bare_equals_absent: bool,
) -> list[str]:
    """Those of the tables `names` whose content differs between two saves (counters ignored).

    Only the tables a transaction touched are compared: the others are not ours to vouch for (another
    agent may change `filter` meanwhile). `bare_equals_absent` is for iptables-legacy, whose tables, once a
    network namespace has used them, exist until the namespace goes away: there a bare table and no table
    filter the same (nothing).
    """
    out = []
    for name in sorted(set(names)):
        if name not in before and name not in after:
            continue
        b, a = before.get(name), after.get(name)
        if b is not None and a is not None:
            if _content(b) != _content(a):
                out.append(name)
        elif not (bare_equals_absent and is_bare(b or a)):  # type: ignore[arg-type]
            out.append(name)
    return out


def our_lines(saved: dict[str, SavedTable]) -> list[str]:
    """Our part of a save, in a stable order for diffs: `table: line` (counters stripped)."""
    out = []
    for name in TABLE_ORDER + tuple(sorted(set(saved) - set(TABLE_ORDER))):
        t = saved.get(name)
        if t is None:
            continue
        for c in t.chain_names():
            if c.startswith(CHAIN_PREFIX):
                out.append(f"{name}: :{c}")
        rules = [r for r in t.rules if is_ours(r)]
        order = {c: i for i, c in enumerate(BUILTIN_ORDER)}
        rules.sort(key=lambda r: (0, order[r.split()[1]]) if r.split()[1] in order else (1, r.split()[1]))
        out += [f"{name}: {r}" for r in rules]
    return out


@dataclass(frozen=True)
class Plan:
    family: int
    desired: list[str]
    live: list[str]

    @property
    def equal(self) -> bool:
        return self.desired == self.live

    def diff(self) -> str:
        import difflib  # `plan --diff` only; install and kuma-init do without it

        return "".join(
            difflib.unified_diff(
                [x + "\n" for x in self.live],
                [x + "\n" for x in self.desired],
                fromfile=f"live (IPv{self.family})",
                tofile=f"desired (IPv{self.family})",
            )
        )

    def to_json(self) -> dict[str, object]:
        live, desired = set(self.live), set(self.desired)
        return {
            "family": f"ipv{self.family}",
            "equal": self.equal,
            "missing": [x for x in self.desired if x not in live],
            "unexpected": [x for x in self.live if x not in desired],
            "orderDiffers": not self.equal and live == desired,
        }


def plans_json(plans: list[Plan]) -> str:
    import json  # `plan --json` only; install and kuma-init do without it

    return json.dumps(
        {"equal": all(p.equal for p in plans), "families": [p.to_json() for p in plans]}, indent=2
    )
