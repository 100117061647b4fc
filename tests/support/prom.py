"""A strict reader of the Prometheus text exposition format (version 0.0.4), for tests.

It refuses anything node_exporter's textfile collector would refuse, and a little more
(blank lines, a family without HELP and TYPE): the point is to catch a malformed file.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
LABEL = r"[a-zA-Z_][a-zA-Z0-9_]*"
VALUE = r'"(?:[^"\\\n]|\\[\\"n])*"'
HELP_RE = re.compile(rf"# HELP ({NAME}) ((?:[^\\\n]|\\[\\n])*)")
TYPE_RE = re.compile(rf"# TYPE ({NAME}) (counter|gauge|histogram|summary|untyped)")
SAMPLE_RE = re.compile(
    rf"({NAME})(?:\{{((?:{LABEL}={VALUE})(?:,{LABEL}={VALUE})*)?,?\}})? "
    r"([-+]?(?:\d+(?:\.\d*)?(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?|NaN|Inf))"
    r"(?: (-?\d+))?"
)
PAIR_RE = re.compile(rf"({LABEL})=({VALUE})")


class ExpositionError(ValueError):
    pass


@dataclass
class Family:
    name: str
    help: str | None = None
    type: str | None = None
    samples: dict[frozenset[tuple[str, str]], float] = field(default_factory=dict)

    def value(self, **labels: str) -> float:
        """The value of the one sample whose labels include ``labels``."""
        found = [v for k, v in self.samples.items() if set(labels.items()) <= set(k)]
        if len(found) != 1:
            raise KeyError(f"{self.name}{labels}: {len(found)} samples match")
        return found[0]


def _unescape(text: str) -> str:
    return re.sub(r"\\(.)", lambda m: {"n": "\n"}.get(m.group(1), m.group(1)), text)


def parse(text: str) -> dict[str, Family]:
    if not text.endswith("\n"):
        raise ExpositionError("the file must end with a newline")
    families: dict[str, Family] = {}
    finished: set[str] = set()  # families whose samples are over (must be contiguous)
    current: str | None = None
    for number, line in enumerate(text[:-1].split("\n"), 1):
        where = f"line {number}: {line!r}"
        if m := HELP_RE.fullmatch(line):
            name = m.group(1)
            fam = families.setdefault(name, Family(name))
            if fam.help is not None or fam.samples:
                raise ExpositionError(f"{where}: HELP repeated or after samples")
            fam.help = _unescape(m.group(2))
        elif m := TYPE_RE.fullmatch(line):
            name = m.group(1)
            fam = families.setdefault(name, Family(name))
            if fam.type is not None or fam.samples:
                raise ExpositionError(f"{where}: TYPE repeated or after samples")
            fam.type = m.group(2)
        elif line.startswith("#"):
            raise ExpositionError(f"{where}: a comment that is neither HELP nor TYPE")
        elif m := SAMPLE_RE.fullmatch(line):
            name, pairs, value = m.group(1), m.group(2) or "", m.group(3)
            fam = families.get(name)
            if fam is None or fam.help is None or fam.type is None:
                raise ExpositionError(f"{where}: a sample before its HELP and TYPE")
            if name in finished:
                raise ExpositionError(f"{where}: samples of {name} are not contiguous")
            if current is not None and current != name:
                finished.add(current)
            current = name
            labels = [(k, _unescape(v[1:-1])) for k, v in PAIR_RE.findall(pairs)]
            if len({k for k, _ in labels}) != len(labels):
                raise ExpositionError(f"{where}: a label given twice")
            key = frozenset(labels)
            if key in fam.samples:
                raise ExpositionError(f"{where}: the same series twice")
            number_value = float(value.replace("Inf", "inf"))
            if fam.type == "counter" and (number_value < 0 or math.isnan(number_value)):
                raise ExpositionError(f"{where}: a counter must not be negative")
            fam.samples[key] = number_value
        else:
            raise ExpositionError(f"{where}: not a HELP, TYPE or sample line")
    for fam in families.values():
        if not fam.samples:
            raise ExpositionError(f"{fam.name}: HELP/TYPE without any sample")
    return families
