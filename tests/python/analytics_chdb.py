#!/usr/bin/env python3
"""Run Tollgate analytics SQL through chdb (an in-process, current ClickHouse).

Driven by analytics/tests/chdb.rs and dashboards.rs: reads {"steps": [...]} as JSON on stdin, where
a step is {"use": database} (create it if needed and switch to it) or {"sql": ...,
"fetch": bool, "format": optional output format}; runs them in order in one chdb
session and prints {"results": [rows-or-text-or-null, ...]} (one entry per step)
as JSON on stdout: fetched rows as objects (JSONEachRow), or, for a step naming a
"format" (analytics/tests/dashboards.rs asks for TabSeparatedWithNamesAndTypes),
the output text as it is. Any
failure -- chdb missing included -- exits non-zero with the reason on stderr,
so the Rust test fails rather than skips.
"""
import json
import sys


def main() -> int:
    try:
        from chdb import session as chs
    except ImportError as err:
        print(f"chdb is not installed ({err}); pip install -r tests/python/requirements.txt",
              file=sys.stderr)
        return 2
    request = json.load(sys.stdin)
    session = chs.Session()
    # 64-bit integers as JSON numbers, as the Rust side deserializes them.
    session.query("SET output_format_json_quote_64bit_integers = 0")
    results = []
    for index, step in enumerate(request["steps"]):
        sql = step.get("sql", "")
        try:
            if "use" in step:
                session.query(f"CREATE DATABASE IF NOT EXISTS `{step['use']}`")
                session.query(f"USE `{step['use']}`")
                results.append(None)
            elif step.get("format"):
                results.append(str(session.query(sql, step["format"])))
            elif step.get("fetch"):
                text = str(session.query(sql, "JSONEachRow"))
                results.append([json.loads(line) for line in text.splitlines() if line.strip()])
            else:
                session.query(sql)
                results.append(None)
        except Exception as err:  # report which statement failed, then fail
            print(f"step {index} failed: {err}\nSQL: {sql}", file=sys.stderr)
            return 1
    json.dump({"engine": str(session.query("SELECT version()")).strip(), "results": results},
              sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
