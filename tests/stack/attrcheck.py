"""Checks investigation queries (TraceQL, Jaeger tag searches) against docs/attributes.md.

docs/attributes.md is the table of attributes podtrail emits: a Markdown table whose first
column is the key in backticks, then type, span kind(s), meaning. A query that names a key
missing from the table, compares a key with a value of the wrong type, or with a value
outside the enumeration given in the meaning column (e.g. `exec, attach, debug`) is an
error: so renaming an attribute or a value in podtrail breaks the dashboards' tests until the
queries follow.
"""
import re
import shlex
from dataclasses import dataclass, field

# TraceQL words that are not attributes: intrinsics, operators, functions, literals.
# (Tempo docs: "TraceQL" and "TraceQL metrics queries".)
TRACEQL_WORDS = {
    # intrinsics (bare and scoped forms)
    "name", "status", "statusMessage", "kind", "duration", "traceDuration", "rootName",
    "rootServiceName", "nestedSetParent", "nestedSetLeft", "nestedSetRight",
    "span:name", "span:status", "span:statusMessage", "span:kind", "span:duration",
    "span:id", "span:parentID", "trace:rootName", "trace:rootService", "trace:duration",
    "trace:id", "event:name", "event:timeSinceStart", "link:traceID", "link:spanID",
    "instrumentation:name", "instrumentation:version",
    # literals and status/kind values
    "nil", "true", "false", "ok", "error", "unset", "unspecified", "internal", "client",
    "server", "producer", "consumer",
    # pipeline functions and aggregates
    "select", "by", "count", "avg", "max", "min", "sum", "coalesce", "with",
    "rate", "count_over_time", "min_over_time", "max_over_time", "avg_over_time",
    "sum_over_time", "quantile_over_time", "histogram_over_time", "compare", "topk",
    "bottomk",
}
SCOPES = ("span", "resource", "event", "link", "instrumentation")
STRING = r'"(?:[^"\\]|\\.)*"'
# scope.attribute (dots, dashes and slashes are legal in attribute names); quoted form too.
ATTR = r'(?:(?P<scope>%s)|(?<![\w:.]))\.(?P<key>"[^"]+"|[A-Za-z_][\w.\-/]*[\w])' % "|".join(SCOPES)
COMPARE = re.compile(ATTR + r'\s*(?P<op>=~|!~|!=|>=|<=|=|>|<)\s*(?P<val>%s|[\w.\-]+)' % STRING)
ATTR_RE = re.compile(ATTR)


@dataclass
class Attr:
    key: str
    type: str
    kinds: str
    meaning: str
    enum: set = field(default_factory=set)


def parse_table(text):
    """{key: Attr} from the Markdown table(s) of docs/attributes.md."""
    attrs = {}
    for line in text.splitlines():
        m = re.match(r"^\|\s*`([^`]+)`\s*\|([^|]*)\|([^|]*)\|(.*)\|\s*$", line)
        if not m:
            continue
        key, typ, kinds, meaning = (s.strip() for s in m.groups())
        a = Attr(key, typ, kinds, meaning)
        # An enumeration: the meaning is a plain comma-separated list of lowercase words.
        if typ.startswith("string") and re.fullmatch(r"[a-z_]+(, [a-z_]+)+", meaning):
            a.enum = set(meaning.split(", "))
        attrs[key] = a
    return attrs


def lookup(attrs, key):
    """The documented attribute `key` is: itself, or a template row (`k8s.pod.label`, whose
    meaning says it is used as `k8s.pod.label.<key>`) it instantiates."""
    if key in attrs:
        return attrs[key]
    for k, a in attrs.items():
        if key.startswith(k + ".") and f"`{k}.<key>`" in a.meaning:
            return a
    return None


def _type_ok(typ, val):
    if val in ("true", "false"):
        return typ.startswith("bool")
    if re.fullmatch(r"-?\d+(\.\d+)?", val):
        return typ.startswith(("int", "double", "float"))
    if val.startswith('"'):
        return typ.startswith("string")
    return val == "nil"


def check_traceql(query, attrs, session_scope="span"):
    """Returns a list of problems with one TraceQL query (empty when it is fine)."""
    errors = []
    if query.count("{") != query.count("}") or query.count("(") != query.count(")"):
        errors.append(f"unbalanced brackets in {query!r}")
    if "{" not in query:
        errors.append(f"not a TraceQL spanset query: {query!r}")
    for m in ATTR_RE.finditer(re.sub(STRING, '""', query)):
        key = m.group("key").strip('"')
        scope = m.group("scope")
        a = lookup(attrs, key)
        if a is None:
            errors.append(f"unknown attribute {key!r} in {query!r}")
            continue
        resource_only = a.kinds.strip() == "resource"
        if resource_only and scope not in ("resource", None):
            errors.append(f"{key!r} is a resource attribute; use resource. in {query!r}")
        if not resource_only and scope != session_scope:
            errors.append(f"use the {session_scope}. scope for {key!r} (a k8sattributes "
                          f"processor stamps podtrail's own pod as resource) in {query!r}")
    for m in COMPARE.finditer(query):
        key, op, val = m.group("key").strip('"'), m.group("op"), m.group("val")
        a = lookup(attrs, key)
        if a is None or "$" in val:
            continue
        if op in ("=~", "!~"):
            if not a.type.startswith("string"):
                errors.append(f"regex on non-string {key!r} in {query!r}")
            continue
        if not _type_ok(a.type, val):
            errors.append(f"{key!r} is {a.type}, compared with {val} in {query!r}")
        if a.enum and val.startswith('"') and val.strip('"') not in a.enum:
            errors.append(f"{key!r} has no value {val} (values: {sorted(a.enum)}) in {query!r}")
    rest = ATTR_RE.sub(" ", re.sub(STRING, '""', query))
    for word in re.findall(r"[A-Za-z_][\w:]*", rest):
        if word not in TRACEQL_WORDS:
            errors.append(f"unknown TraceQL word {word!r} in {query!r}")
    return errors


def check_jaeger_tags(tags, attrs):
    """Jaeger tag search: space-separated exact key=value pairs (logfmt), all on one span."""
    errors = []
    for pair in shlex.split(tags):
        if "=" not in pair:
            errors.append(f"not key=value: {pair!r}")
            continue
        key, val = pair.split("=", 1)
        a = lookup(attrs, key)
        if a is None:
            errors.append(f"unknown attribute {key!r} in Jaeger tags {tags!r}")
        elif a.enum and "$" not in val and val not in a.enum:
            errors.append(f"{key!r} has no value {val!r} (values: {sorted(a.enum)})")
    return errors
