"""Reading podtrail's traces back from the real backends (Jaeger's query API, Tempo's API).

Only the backends' own JSON is read here: what the agent sent went through the real collector
into a real Jaeger and a real Tempo, and these helpers turn their answers into plain spans.
"""
import base64


class Span:
    def __init__(self, span_id, parent_id, name, kind, attrs, events, status=None):
        self.span_id = span_id
        self.parent_id = parent_id
        self.name = name
        self.kind = kind
        self.attrs = attrs
        self.events = events
        self.status = status

    def __repr__(self):
        return f"Span({self.name!r}, {self.span_id}, parent={self.parent_id})"

    def get(self, key, default=None):
        return self.attrs.get(key, default)


class Trace:
    def __init__(self, trace_id, spans):
        self.trace_id = trace_id
        self.spans = spans
        self.by_id = {s.span_id: s for s in spans}

    @property
    def roots(self):
        return [s for s in self.spans if not s.parent_id or s.parent_id not in self.by_id]

    @property
    def root(self):
        roots = self.roots
        assert len(roots) == 1, f"trace {self.trace_id} is not one tree: roots {roots}"
        return roots[0]

    def named(self, name):
        return [s for s in self.spans if s.name == name]

    def where(self, **attrs):
        out = []
        for s in self.spans:
            if all(s.attrs.get(k.replace("__", ".")) == v for k, v in attrs.items()):
                out.append(s)
        return out

    def parent(self, span):
        return self.by_id.get(span.parent_id)

    def ancestors(self, span):
        out = []
        p = self.parent(span)
        while p is not None:
            out.append(p)
            p = self.parent(p)
        return out

    def alerts(self):
        """(span, rule name) for every alert: span events named `alert`, or alert spans."""
        out = []
        for s in self.spans:
            for ev in s.events:
                if ev["name"] == "alert":
                    out.append((s, ev["attrs"].get("security_rule.name")))
            if s.name == "alert" or s.attrs.get("podtrail.alert.rule"):
                out.append((s, s.attrs.get("security_rule.name") or s.attrs.get("podtrail.alert.rule")))
        return out

    def tree(self):
        """The trace as indented text, for failure messages."""
        lines = []

        def walk(s, depth):
            lines.append("  " * depth + f"{s.name} [{s.kind}]")
            for c in sorted((c for c in self.spans if c.parent_id == s.span_id), key=lambda c: c.name):
                walk(c, depth + 1)

        for r in self.roots:
            walk(r, 0)
        return "\n".join(lines)


def _jaeger_value(tag):
    return tag.get("value")


def from_jaeger(data):
    """A trace from Jaeger's /api/traces/<id> answer (its `data[0]`)."""
    spans = []
    for s in data["spans"]:
        parent = None
        for ref in s.get("references") or []:
            if ref.get("refType") == "CHILD_OF":
                parent = ref["spanID"]
        attrs = {t["key"]: _jaeger_value(t) for t in s.get("tags") or []}
        events = []
        for log in s.get("logs") or []:
            fields = {f["key"]: f.get("value") for f in log.get("fields") or []}
            events.append({"name": fields.get("event"), "attrs": fields})
        kind = attrs.get("span.kind", "internal")
        spans.append(Span(s["spanID"], parent, s["operationName"], kind, attrs, events))
    return Trace(data["traceID"], spans)


def _otlp_value(v):
    if not v:
        return None
    for k in ("stringValue", "boolValue", "doubleValue"):
        if k in v:
            return v[k]
    if "intValue" in v:
        return int(v["intValue"])
    if "arrayValue" in v:
        return [_otlp_value(x) for x in v["arrayValue"].get("values", [])]
    return None


def _b64hex(s):
    if not s:
        return None
    try:
        raw = base64.b64decode(s)
        if len(raw) in (8, 16):
            return raw.hex()
    except (ValueError, TypeError):
        pass
    return s.lower()


KINDS = {"SPAN_KIND_INTERNAL": "internal", "SPAN_KIND_SERVER": "server", "SPAN_KIND_CLIENT": "client",
         "SPAN_KIND_PRODUCER": "producer", "SPAN_KIND_CONSUMER": "consumer"}


def from_tempo(trace_id, data):
    """A trace from Tempo's /api/traces/<id> answer (OTLP JSON: batches or resourceSpans)."""
    spans = []
    for rs in data.get("batches") or data.get("resourceSpans") or []:
        for ss in rs.get("scopeSpans") or rs.get("instrumentationLibrarySpans") or []:
            for s in ss.get("spans") or []:
                attrs = {a["key"]: _otlp_value(a.get("value")) for a in s.get("attributes") or []}
                events = [{"name": e.get("name"),
                           "attrs": {a["key"]: _otlp_value(a.get("value")) for a in e.get("attributes") or []}}
                          for e in s.get("events") or []]
                spans.append(Span(_b64hex(s.get("spanId")), _b64hex(s.get("parentSpanId")), s.get("name"),
                                  KINDS.get(s.get("kind"), "internal"), attrs, events, s.get("status")))
    return Trace(trace_id, spans)
