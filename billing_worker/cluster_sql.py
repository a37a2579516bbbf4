"""Rewrite the single-node schema files into their cluster variant (ReplicatedMergeTree + Distributed).

The schema files are written for one node. With a cluster name, each statement is rewritten:
- `CREATE TABLE t ... ENGINE = XMergeTree(args)` preceded by `-- cluster: distributed by <key>` becomes
  `t_local ON CLUSTER c` with `ReplicatedXMergeTree('/clickhouse/tables/{shard}/{database}/t_local',
  '{replica}', args)` plus `t ON CLUSTER c AS t_local ENGINE = Distributed(c, currentDatabase(), t_local, key)`;
  queries keep using `t`. The sharding key keeps one account (hence every copy of a request id) on one
  shard, which is what makes `FINAL` deduplicate across a cluster.
- a table without the directive is replicated to every node (one replication path without `{shard}`).
- `ALTER TABLE` goes to the local table (and to the Distributed one for column changes), views and
  `DROP TABLE` get `ON CLUSTER`; `INSERT`/`SELECT` are left as they are. Anything else is refused.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from billing_worker.errors import MigrationError

CLUSTER_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*\Z")
_DIRECTIVE = re.compile(r"^\s*--\s*cluster:\s*distributed\s+by\s+(.+?)\s*$", re.I | re.M)
_CREATE_TABLE = re.compile(r"\A(CREATE\s+TABLE\s+(?:IF\s+NOT\s+EXISTS\s+)?)([A-Za-z_]\w*)\b", re.I)
_ENGINE = re.compile(r"ENGINE\s*=\s*(\w*MergeTree)\s*(?:\(([^()]*)\))?", re.I)
_ALTER = re.compile(r"\A(ALTER\s+TABLE\s+)([A-Za-z_]\w*)\b(.*)\Z", re.I | re.S)
_COLUMN_ALTER = re.compile(r"\A\s*(ADD|DROP|MODIFY|RENAME|COMMENT|CLEAR)\s+COLUMN\b", re.I)
_CREATE_VIEW = re.compile(r"\A(CREATE\s+(?:MATERIALIZED\s+)?VIEW\s+(?:IF\s+NOT\s+EXISTS\s+)?)([A-Za-z_]\w*)\b",
                          re.I)
_DROP_TABLE = re.compile(r"\A(DROP\s+TABLE\s+(?:IF\s+EXISTS\s+)?)([A-Za-z_]\w*)\b(.*)\Z", re.I | re.S)
_PASS_THROUGH = re.compile(r"\A(INSERT|SELECT|WITH)\b", re.I)


def code_of(statement: str) -> str:
    """The statement without its full-line `--` comments."""
    lines = [line for line in statement.splitlines() if not line.lstrip().startswith("--")]
    return "\n".join(lines).strip()


@dataclass
class ClusterRenderer:
    """Stateful across the files of one schema: it remembers which tables are distributed."""

    cluster: str
    distributed: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not CLUSTER_NAME.match(self.cluster):
            raise MigrationError(f"invalid cluster name {self.cluster!r}")

    @property
    def on_cluster(self) -> str:
        return f"ON CLUSTER '{self.cluster}'"

    def render(self, statement: str) -> list[str]:
        code = code_of(statement)
        if m := _CREATE_TABLE.match(code):
            directive = _DIRECTIVE.search(statement)
            return self._create_table(code, m, directive.group(1) if directive else None)
        if m := _ALTER.match(code):
            return self._alter(m)
        if m := _CREATE_VIEW.match(code):
            return [f"{m.group(1)}{m.group(2)} {self.on_cluster}{code[m.end():]}"]
        if m := _DROP_TABLE.match(code):
            names = [f"{m.group(2)}_local", m.group(2)] if m.group(2) in self.distributed else [m.group(2)]
            return [f"{m.group(1)}{name} {self.on_cluster}{m.group(3)}" for name in names]
        if _PASS_THROUGH.match(code):
            return [code]
        raise MigrationError(f"no cluster rewrite for statement: {code[:80]!r}")

    def _create_table(self, code: str, m: re.Match[str], sharding_key: str | None) -> list[str]:
        name = m.group(2)
        engine = _ENGINE.search(code)
        if engine is None:
            raise MigrationError(f"table {name}: only *MergeTree engines can be made replicated")
        local = f"{name}_local" if sharding_key else name
        zk_path = (f"/clickhouse/tables/{{shard}}/{{database}}/{local}" if sharding_key
                   else f"/clickhouse/tables/all/{{database}}/{local}")
        args = ", ".join(a for a in (f"'{zk_path}'", "'{replica}'", (engine.group(2) or "").strip()) if a)
        replicated = f"ENGINE = Replicated{engine.group(1)}({args})"
        body = code[m.end():engine.start()] + replicated + code[engine.end():]
        statements = [f"{m.group(1)}{local} {self.on_cluster}{body}"]
        if sharding_key:
            self.distributed[name] = sharding_key
            statements.append(
                f"{m.group(1)}{name} {self.on_cluster} AS {local}\n"
                f"ENGINE = Distributed('{self.cluster}', currentDatabase(), {local}, {sharding_key})")
        return statements

    def _alter(self, m: re.Match[str]) -> list[str]:
        head, name, rest = m.group(1), m.group(2), m.group(3)
        if name not in self.distributed:
            return [f"{head}{name} {self.on_cluster}{rest}"]
        statements = [f"{head}{name}_local {self.on_cluster}{rest}"]
        if _COLUMN_ALTER.match(rest):
            statements.append(f"{head}{name} {self.on_cluster}{rest}")
        return statements
