"""Prometheus text exposition as Go's `expfmt` reads and writes it: the parser behind Kuma's metric mutators.

Kuma runs every MeshMetric scrape through `expfmt.TextParser.TextToMetricFamilies` (then a mutator such as
the profile filter, then `expfmt.MetricFamilyToText` or the OpenTelemetry mapping), following
app/kuma-dp/pkg/dataplane/metrics/metrics_mutator.go. This module is that parser and writer over plain
dataclasses: samples `_bucket`/`_sum`/`_count` fold into their histogram or summary family, `le` and
`quantile` leave the label list, families without samples are dropped, and numbers are written as Go's
`strconv.FormatFloat(f, 'g', -1, 64)` does (`1e+06`, not `1000000.0`).
"""

from __future__ import annotations

import decimal
import math
from dataclasses import dataclass, field

__all__ = ["Family", "Sample", "TextParseError", "go_float", "parse_text", "render_families"]

Labels = tuple[tuple[str, str], ...]
TYPES = ("counter", "gauge", "histogram", "summary", "untyped")


class TextParseError(ValueError):
    """The page is not Prometheus text (the line number and the problem are in the message)."""


@dataclass
class Sample:
    """One metric of a family (Go `io_prometheus_client.Metric`)."""

    labels: Labels
    value: float = 0.0
    timestamp_ms: int | None = None
    #: histogram: (upper bound, cumulative count) in page order, +Inf included when the page has it
    buckets: list[tuple[float, float]] = field(default_factory=list)
    #: summary: (quantile, value)
    quantiles: list[tuple[float, float]] = field(default_factory=list)
    sample_sum: float = 0.0
    sample_count: float = 0.0


@dataclass
class Family:
    name: str
    type: str = "untyped"
    help: str | None = None
    samples: list[Sample] = field(default_factory=list)
    _index: dict[Labels, Sample] = field(default_factory=dict, repr=False)

    def sample(self, labels: Labels) -> Sample:
        """The metric with these labels, created on first use (histogram parts share one)."""
        found = self._index.get(labels)
        if found is None:
            found = Sample(labels)
            self._index[labels] = found
            self.samples.append(found)
        return found


def go_float(value: float) -> str:
    """Prometheus' `writeFloat`: 1, 0, -1, NaN, +Inf, -Inf, else `strconv.FormatFloat(f, 'g', -1, 64)`."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value == 0:
        return "0"
    sign = "-" if value < 0 else ""
    d = decimal.Decimal(repr(abs(value))).normalize()
    _, digit_tuple, exponent = d.as_tuple()
    assert isinstance(exponent, int)
    digits = "".join(map(str, digit_tuple))
    point = len(digits) + exponent  # digits before the decimal point
    exp10 = point - 1
    if exp10 < -4 or exp10 >= 6:
        # Go's %e choice for the shortest 'g' form: exponent < -4 or >= 6 (so 1e6 is "1e+06").
        mantissa = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
        return f"{sign}{mantissa}e{'-' if exp10 < 0 else '+'}{abs(exp10):02d}"
    if point <= 0:
        return f"{sign}0.{'0' * -point}{digits}"
    if point >= len(digits):
        return sign + digits + "0" * (point - len(digits))
    return f"{sign}{digits[:point]}.{digits[point:]}"


def _parse_float(text: str, lineno: int) -> float:
    try:
        return float(text)
    except ValueError:
        raise TextParseError(
            f"text format parsing error in line {lineno}: expected float as value, got {text!r}"
        ) from None


def _unescape(value: str) -> str:
    out, i = [], 0
    while i < len(value):
        c = value[i]
        if c == "\\" and i + 1 < len(value):
            nxt = value[i + 1]
            out.append("\n" if nxt == "n" else nxt)
            i += 2
            continue
        out.append(c)
        i += 1
    return "".join(out)


def _split_sample(line: str, lineno: int) -> tuple[str, list[tuple[str, str]], list[str]]:
    brace = line.find("{")
    space = min((i for i in (line.find(" "), line.find("\t")) if i != -1), default=-1)
    if brace == -1 or (space != -1 and space < brace):
        name, _, rest = line.partition(" ") if space != -1 else (line, "", "")
        return name.strip(), [], rest.split()
    name = line[:brace].strip()
    labels: list[tuple[str, str]] = []
    i = brace + 1
    n = len(line)
    while True:
        while i < n and line[i] in " \t,":
            i += 1
        if i < n and line[i] == "}":
            i += 1
            break
        eq = line.find("=", i)
        if eq == -1 or eq + 1 >= n or line[eq + 1] != '"':
            raise TextParseError(f"text format parsing error in line {lineno}: invalid label set")
        key = line[i:eq].strip()
        j = eq + 2
        buf = []
        while j < n and line[j] != '"':
            if line[j] == "\\" and j + 1 < n:
                buf.append(line[j : j + 2])
                j += 2
                continue
            buf.append(line[j])
            j += 1
        if j >= n:
            raise TextParseError(f"text format parsing error in line {lineno}: unterminated label value")
        labels.append((key, _unescape("".join(buf))))
        i = j + 1
    return name, labels, line[i:].split()


def parse_text(page: str) -> dict[str, Family]:
    """Go's `TextToMetricFamilies`: name -> family, in first-seen order; raises `TextParseError`."""
    families: dict[str, Family] = {}

    def family_for(sample_name: str) -> tuple[Family, str]:
        for suffix in ("_bucket", "_sum", "_count"):
            if sample_name.endswith(suffix):
                base = families.get(sample_name[: -len(suffix)])
                if base is not None and (
                    base.type == "histogram" or (base.type == "summary" and suffix != "_bucket")
                ):
                    return base, suffix
        fam = families.get(sample_name)
        if fam is None:
            fam = families[sample_name] = Family(sample_name)
        return fam, ""

    for lineno, raw in enumerate(page.splitlines(), 1):
        line = raw.strip()
        if not line:
            continue
        if line.startswith("#"):
            parts = line[1:].strip().split(None, 2)
            if len(parts) >= 2 and parts[0] in ("HELP", "TYPE"):
                name = parts[1]
                fam = families.get(name)
                if fam is None:
                    fam = families[name] = Family(name)
                arg = parts[2] if len(parts) > 2 else ""
                if parts[0] == "HELP":
                    if fam.help is not None:
                        raise TextParseError(
                            f"text format parsing error in line {lineno}: second HELP line for metric name "
                            f"{name!r}"
                        )
                    fam.help = _unescape(arg)
                else:
                    kind = arg.strip().lower()
                    if kind not in TYPES:
                        raise TextParseError(
                            f"text format parsing error in line {lineno}: unknown metric type {arg!r}"
                        )
                    if fam.samples or fam.type != "untyped":
                        raise TextParseError(
                            f"text format parsing error in line {lineno}: second TYPE line for metric name "
                            f"{name!r}, or TYPE reported after samples"
                        )
                    fam.type = kind
            continue
        name, labels, rest = _split_sample(line, lineno)
        if not rest:
            raise TextParseError(f"text format parsing error in line {lineno}: expected a value")
        value = _parse_float(rest[0], lineno)
        timestamp = None
        if len(rest) > 1:
            try:
                timestamp = int(rest[1])
            except ValueError:
                raise TextParseError(
                    f"text format parsing error in line {lineno}: expected integer as timestamp"
                ) from None
        fam, suffix = family_for(name)
        special = (
            {"histogram": "le", "summary": "quantile"}.get(fam.type)
            if not suffix or suffix == "_bucket"
            else None
        )
        bound = None
        if special:
            kept = []
            for k, v in labels:
                if k == special:
                    bound = _parse_float(v, lineno)
                else:
                    kept.append((k, v))
            labels = kept
        sample = fam.sample(tuple(labels))
        sample.timestamp_ms = timestamp
        if fam.type == "histogram":
            if suffix == "_bucket":
                if bound is None:
                    raise TextParseError(f'text format parsing error in line {lineno}: missing label "le"')
                sample.buckets.append((bound, value))
            elif suffix == "_sum":
                sample.sample_sum = value
            elif suffix == "_count":
                sample.sample_count = value
            else:
                raise TextParseError(
                    f"text format parsing error in line {lineno}: histogram sample without suffix"
                )
        elif fam.type == "summary":
            if suffix == "_sum":
                sample.sample_sum = value
            elif suffix == "_count":
                sample.sample_count = value
            elif bound is not None:
                sample.quantiles.append((bound, value))
            else:
                raise TextParseError(f'text format parsing error in line {lineno}: missing label "quantile"')
        else:
            sample.value = value
    return {name: fam for name, fam in families.items() if fam.samples}


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _line(name: str, labels: Labels, extra: tuple[str, str] | None, value: str, ts: int | None) -> str:
    pairs = [*labels, extra] if extra else list(labels)
    inner = ",".join(f'{k}="{_escape_label(v)}"' for k, v in pairs)
    text = f"{name}{{{inner}}} {value}" if pairs else f"{name} {value}"
    return text + (f" {ts}" if ts is not None else "")


def _count(value: float) -> str:
    return str(int(value)) if value >= 0 and not math.isinf(value) else go_float(value)


def render_family(fam: Family) -> str:
    """Go's `MetricFamilyToText` for one family."""
    out = []
    if fam.help is not None:
        out.append(
            f"# HELP {fam.name} {fam.help.replace(chr(92), chr(92) * 2).replace(chr(10), chr(92) + 'n')}"
        )
    out.append(f"# TYPE {fam.name} {fam.type}")
    for s in fam.samples:
        if fam.type == "histogram":
            inf_seen = False
            for bound, cum in s.buckets:
                inf_seen = inf_seen or math.isinf(bound)
                out.append(
                    _line(
                        f"{fam.name}_bucket", s.labels, ("le", go_float(bound)), _count(cum), s.timestamp_ms
                    )
                )
            if not inf_seen:
                out.append(
                    _line(
                        f"{fam.name}_bucket", s.labels, ("le", "+Inf"), _count(s.sample_count), s.timestamp_ms
                    )
                )
            out.append(_line(f"{fam.name}_sum", s.labels, None, go_float(s.sample_sum), s.timestamp_ms))
            out.append(_line(f"{fam.name}_count", s.labels, None, _count(s.sample_count), s.timestamp_ms))
        elif fam.type == "summary":
            for q, v in s.quantiles:
                out.append(_line(fam.name, s.labels, ("quantile", go_float(q)), go_float(v), s.timestamp_ms))
            out.append(_line(f"{fam.name}_sum", s.labels, None, go_float(s.sample_sum), s.timestamp_ms))
            out.append(_line(f"{fam.name}_count", s.labels, None, _count(s.sample_count), s.timestamp_ms))
        else:
            out.append(_line(fam.name, s.labels, None, go_float(s.value), s.timestamp_ms))
    return "\n".join(out) + "\n"


def render_families(families: dict[str, Family]) -> str:
    """Kuma's `AggregatedMetricsMutator` output: each family's text followed by a blank line."""
    return "".join(render_family(f) + "\n" for f in families.values())
