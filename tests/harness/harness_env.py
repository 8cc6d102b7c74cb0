"""What the tests/harness/*.sh scripts print, read the one way both Python suites read it.

A script that starts something (jaeger.sh, tempo.sh, collector.sh, kube.sh) prints one
KEY=VALUE line per address or path its caller needs; other lines are not for parsing.
"""


def parse_env(text):
    """The KEY=VALUE lines of `text` as a dict (a value keeps any further `=`)."""
    out = {}
    for line in text.splitlines():
        if "=" in line:
            k, v = line.split("=", 1)
            out[k.strip()] = v.strip()
    return out
