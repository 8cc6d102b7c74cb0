#!/usr/bin/env python3
"""Generates podtrail's Grafana dashboards (the *.json beside this file).

Why a generator: every panel answers one SOC question with one query, and the queries must
stay in step with docs/attributes.md. Writing them once here keeps the JSON regular;
tests/stack/test_grafana.py checks the JSON is what this script produces (run it after an
edit: `python3 grafana/dashboards/generate.py`) and checks every query against the attribute
table.

Conventions the queries follow (see docs/investigate.md):
- Session and pod attributes are matched with the `span.` scope: a collector's k8sattributes
  processor stamps podtrail's own pod as resource attributes.
- A session's root span is named `kubectl exec|attach|debug|port-forward` or `exec`; process
  spans are named after argv[0]'s basename, connect spans `connect` (the destination is in
  `server.*`).
- Namespaces, users and pods are dropdowns filled from Tempo's tag values (its
  `/api/v2/search/tag/<attribute>/values`), not free text an analyst must type exactly.
- Jaeger searches use service `podtrail` and exact `key=value` tags on one span.
"""
import json
import pathlib

HERE = pathlib.Path(__file__).resolve().parent

TEMPO = {"type": "tempo", "uid": "tempo"}
JAEGER = {"type": "jaeger", "uid": "jaeger"}
PROM = {"type": "prometheus", "uid": "prometheus"}

# Root spans of real sessions (probes excluded): TraceQL regexes are fully anchored.
ROOT = 'name =~ "kubectl (exec|attach|debug|port-forward)|exec"'
# Sessions no Kubernetes request explains: exec and debug sessions no request matched, and
# node sessions (nsenter from the node). The same string is in README.md and
# docs/investigate.md (tests/stack/test_grafana.py holds them to it).
UNEXPLAINED = ('{ span.podtrail.attribution.source = "none" && '
               'span.podtrail.session.kind =~ "exec|debug|node" }')
SESSION_COLUMNS = ("span.user.name, span.client.address, span.k8s.namespace.name, "
                   "span.k8s.pod.name, span.k8s.container.name, span.podtrail.k8s.command")


class Board:
    def __init__(self, uid, title, description, variables=(), time_from="now-7d"):
        self.uid, self.title, self.description = uid, title, description
        self.variables, self.time_from = list(variables), time_from
        self.panels, self.y, self.next_id = [], 0, 1

    def _add(self, panel, w=24, h=9, x=0):
        panel["id"] = self.next_id
        self.next_id += 1
        panel["gridPos"] = {"h": h, "w": w, "x": x, "y": self.y}
        if x + w >= 24:
            self.y += h
        self.panels.append(panel)

    def text(self, content, h=4):
        self._add({"type": "text", "title": "", "options": {"mode": "markdown", "content": content}}, h=h)

    def row(self, title):
        self._add({"type": "row", "title": title, "collapsed": False, "panels": []}, h=1)

    def tempo_table(self, title, description, query, w=24, x=0, h=9, table_type="spans"):
        self._add({
            "type": "table", "title": title, "description": description, "datasource": TEMPO,
            "targets": [{"refId": "A", "datasource": TEMPO, "queryType": "traceql",
                         "query": query, "limit": 500, "spss": 100, "tableType": table_type}],
            "options": {"showHeader": True, "cellHeight": "sm"},
            "fieldConfig": {"defaults": {}, "overrides": []},
        }, w=w, h=h, x=x)

    def tempo_trace(self, title, description, trace_id_expr, h=16):
        self._add({
            "type": "traces", "title": title, "description": description, "datasource": TEMPO,
            "targets": [{"refId": "A", "datasource": TEMPO, "queryType": "traceql",
                         "query": trace_id_expr}],
        }, h=h)

    def tempo_timeseries(self, title, description, query, w=12, x=0, h=9):
        self._add({
            "type": "timeseries", "title": title, "description": description, "datasource": TEMPO,
            "targets": [{"refId": "A", "datasource": TEMPO, "queryType": "traceql",
                         "metricsQueryType": "range", "query": query}],
            "fieldConfig": {"defaults": {"custom": {"drawStyle": "bars", "fillOpacity": 60,
                                                     "stacking": {"mode": "normal"}}},
                            "overrides": []},
            "options": {"legend": {"displayMode": "table", "placement": "right",
                                   "calcs": ["sum"]}},
        }, w=w, h=h, x=x)

    def jaeger_table(self, title, description, tags, operation="", w=24, x=0, h=8):
        self._add({
            "type": "table", "title": title, "description": description, "datasource": JAEGER,
            "targets": [{"refId": "A", "datasource": JAEGER, "queryType": "search",
                         "service": "podtrail", "operation": operation, "tags": tags,
                         "limit": 200}],
            "options": {"showHeader": True},
            "fieldConfig": {"defaults": {}, "overrides": []},
        }, w=w, h=h, x=x)

    def prom(self, title, description, exprs, unit="short", w=12, x=0, h=8, kind="timeseries"):
        targets = [{"refId": chr(ord("A") + i), "datasource": PROM, "expr": e, "legendFormat": lf}
                   for i, (e, lf) in enumerate(exprs)]
        self._add({
            "type": kind, "title": title, "description": description, "datasource": PROM,
            "targets": targets,
            "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
            "options": {"legend": {"displayMode": "list", "placement": "bottom"}}
            if kind == "timeseries" else {"reduceOptions": {"calcs": ["lastNotNull"]}},
        }, w=w, h=h, x=x)

    def json(self):
        return {
            "uid": self.uid, "title": self.title, "description": self.description,
            "tags": ["podtrail"], "editable": False, "schemaVersion": 39, "version": 1,
            "time": {"from": self.time_from, "to": "now"}, "timezone": "utc",
            "refresh": "", "graphTooltip": 1,
            "templating": {"list": self.variables}, "annotations": {"list": []},
            "links": [{"type": "dashboards", "tags": ["podtrail"], "asDropdown": True,
                       "title": "podtrail"}],
            "panels": self.panels,
        }


def textbox(name, label, default=""):
    return {"type": "textbox", "name": name, "label": label, "query": default,
            "current": {"text": default, "value": default}, "hide": 0}


def tempo_values(name, label, attribute):
    """A dropdown of the values Tempo has seen for `attribute` (a scoped TraceQL name) in the
    dashboard's time range."""
    return {"type": "query", "name": name, "label": label, "datasource": TEMPO,
            "query": {"refId": "TempoDatasourceVariableQueryEditor-VariableQuery", "type": 1,
                      "label": attribute},
            "definition": attribute, "refresh": 2, "sort": 1, "includeAll": False,
            "multi": False, "current": {}, "options": [], "regex": "", "hide": 0}


def investigate():
    b = Board("podtrail-investigate", "podtrail / Investigate",
              "The SOC questions, one query each (docs/investigate.md).",
              [tempo_values("namespace", "Namespace", "span.k8s.namespace.name"),
               tempo_values("user", "User", "span.user.name"),
               tempo_values("pod", "Pod", "span.k8s.pod.name"),
               textbox("audit_id", "Audit ID (as Kubernetes prints it)"),
               textbox("trace_id", "Trace ID"),
               textbox("command", "Command", "tcpdump")])
    b.text("Each panel is one query; click a trace id to open the session as a tree. "
           "Queries use the `span.` scope on purpose (see docs/investigate.md). "
           "Set the variables above; the time range is the search window.")
    b.row("Tempo")
    b.tempo_table(
        "Outbound connections from $namespace to outside the cluster",
        "Q1: every connect span from the namespace whose destination podtrail classified as "
        "external (TraceQL cannot match CIDRs, so the scope is an attribute).",
        '{ span.k8s.namespace.name = "$namespace" && '
        'span.podtrail.network.destination.scope = "external" } | select(span.server.address, '
        'span.server.port, span.network.transport, span.podtrail.network.outcome, '
        'span.k8s.pod.name, span.user.name, span.process.pid)')
    b.tempo_table(
        "One kubectl exec: the session with audit id $audit_id",
        "Q2: every span of the session (the root request, each process with its arguments, "
        "each connection), with who ran it and from where. Paste the audit id as the audit "
        "log or kubectl prints it, dashes and all.",
        '{ span.podtrail.k8s.audit_id = "$audit_id" } | select(span.user.name, span.user.roles, '
        'span.client.address, span.user_agent.original, span.k8s.pod.name, '
        'span.process.command_args, span.server.address, span.server.port)')
    b.tempo_trace(
        "Session $trace_id as a tree",
        "Q2 as a tree: click a trace id in the table above, or give one here (`podtrail show "
        "--audit-id` takes the audit id with or without dashes).", "$trace_id")
    b.tempo_table(
        "Every $command run, on any node, in any workload",
        "Q3: process spans named after argv[0], or whose real binary has that name (a "
        "renamed copy).",
        '{ name = "$command" || span.process.executable.name = "$command" } | '
        'select(span.k8s.node.name, span.k8s.namespace.name, span.k8s.pod.name, span.user.name, '
        'span.process.command_args, span.process.executable.path)')
    b.tempo_table(
        "Everything $user did inside containers",
        "Q4: every span of every session the user started (probes excluded).",
        '{ span.user.name = "$user" && span.podtrail.session.kind != "probe" } | '
        'select(span.k8s.namespace.name, span.k8s.pod.name, span.client.address, '
        'span.process.command_args, span.server.address, span.server.port)')
    b.tempo_table(
        "Sessions in pod $pod",
        "Every session in the chosen namespace and pod, with who opened it.",
        "{ " + ROOT + ' && span.k8s.namespace.name = "$namespace" && '
        'span.k8s.pod.name = "$pod" } | select(' + SESSION_COLUMNS + ")",
        table_type="traces")
    b.row("Jaeger (same questions; exact tags on one span, service podtrail)")
    b.jaeger_table("Jaeger: outbound external connections from $namespace",
                   "Q1 in Jaeger's search.",
                   "k8s.namespace.name=$namespace podtrail.network.destination.scope=external")
    b.jaeger_table("Jaeger: the session with audit id $audit_id", "Q2 in Jaeger's search.",
                   "podtrail.k8s.audit_id=$audit_id")
    b.jaeger_table("Jaeger: every $command run", "Q3 in Jaeger's search.",
                   "process.executable.name=$command")
    b.jaeger_table("Jaeger: everything $user did", "Q4 in Jaeger's search.",
                   "user.name=$user")
    return b


def sessions():
    b = Board("podtrail-sessions", "podtrail / Sessions",
              "Exec sessions over time and the sessions that need a second look.")
    b.tempo_timeseries(
        "Sessions by user", "Session root spans per user (TraceQL metrics; probes excluded).",
        "{ " + ROOT + ' && span.podtrail.session.kind != "probe" } | count_over_time() by (span.user.name)')
    b.tempo_timeseries(
        "Sessions by pod", "Session root spans per namespace and pod.",
        "{ " + ROOT + ' && span.podtrail.session.kind != "probe" } | '
        "count_over_time() by (span.k8s.namespace.name, span.k8s.pod.name)", x=12)
    b.tempo_table(
        "Sessions with alerts",
        "Sessions in which podtrail raised alerts; sort on max_severity_number for worst "
        "first (info 1 ... critical 5).",
        "{ span.podtrail.alerts.count > 0 } | select(span.podtrail.alerts.max_severity_number, "
        "span.podtrail.alerts.max_severity, " + SESSION_COLUMNS + ")", table_type="traces")
    b.tempo_table(
        "Sessions no request explains",
        "No Kubernetes request matched: node-level crictl exec, nsenter (node sessions), or "
        "someone on the node. The absence is the finding; podtrail.node.user is the node login.",
        UNEXPLAINED + " | select(span.podtrail.session.kind, span.podtrail.node.user, "
        "span.k8s.node.name, span.k8s.namespace.name, span.k8s.pod.name)",
        table_type="traces", w=12)
    b.tempo_table(
        "Ambiguous attribution",
        "Overlapping identical requests: the user is one of podtrail.attribution.candidates.",
        "{ " + ROOT + ' && span.podtrail.attribution.confidence = "ambiguous" } | '
        "select(span.podtrail.attribution.candidates, " + SESSION_COLUMNS + ")",
        table_type="traces", w=12, x=12)
    b.tempo_table(
        "Incomplete sessions",
        "Sessions that lost data (ring buffer, rate limit or export queue) or spans.",
        "{ span.podtrail.session.incomplete = true || span.podtrail.session.spans_lost > 0 } | "
        "select(span.podtrail.session.spans_lost, " + SESSION_COLUMNS + ")", table_type="traces")
    b.tempo_table(
        "Port-forwards", "Who opened a tunnel to which pod (no processes run).",
        '{ name = "kubectl port-forward" } | select(' + SESSION_COLUMNS + ")",
        table_type="traces", w=12)
    b.tempo_table(
        "Impersonated sessions", "Requests made with --as: user.name is the real requester.",
        "{ " + ROOT + " && span.podtrail.k8s.impersonated.name != nil } | "
        "select(span.podtrail.k8s.impersonated.name, " + SESSION_COLUMNS + ")",
        table_type="traces", w=12, x=12)
    return b


def agents():
    b = Board("podtrail-agents", "podtrail / Agent health",
              "podtrail's own /metrics: what it saw, what it lost and where.", time_from="now-6h")
    rate = "[$__rate_interval]"
    b.prom("Events by kind", "Kernel events decoded per second.",
           [(f"sum by (kind) (rate(podtrail_events_total{rate}))", "{{kind}}")], unit="ops")
    b.prom("Events lost by reason", "Ring buffer full, rate limit: every loss is counted.",
           [(f"sum by (reason) (rate(podtrail_events_lost_total{rate}))", "{{reason}}")],
           unit="ops", x=12)
    b.prom("Open sessions", "Sessions in progress, per node.",
           [("sum by (instance) (podtrail_sessions_open)", "{{instance}}")])
    b.prom("Sessions exported", "Finished sessions sent to the collector.",
           [(f"sum (rate(podtrail_sessions_exported_total{rate}))", "sessions/s")], unit="ops", x=12)
    b.prom("Spans exported vs lost", "Spans sent, and spans lost by reason.",
           [(f"sum (rate(podtrail_spans_exported_total{rate}))", "exported"),
            (f"sum by (reason) (rate(podtrail_spans_lost_total{rate}))", "lost: {{reason}}")],
           unit="ops")
    b.prom("Export queue", "Spans waiting for the collector; a growing queue means a slow backend.",
           [("sum by (instance) (podtrail_export_queue_spans)", "{{instance}}")], x=12)
    b.prom("Alerts by rule", "Alerts raised per second, by rule and severity.",
           [(f"sum by (rule, severity) (rate(podtrail_alerts_total{rate}))",
             "{{severity}}: {{rule}}")], unit="ops", w=24)
    b.prom("Total losses in range", "Any non-zero value here is a gap in the audit trail.",
           [("sum (increase(podtrail_events_lost_total[$__range]))", "events lost"),
            ("sum (increase(podtrail_spans_lost_total[$__range]))", "spans lost")],
           kind="stat", w=24, h=5)
    return b


BOARDS = {"podtrail-investigate.json": investigate, "podtrail-sessions.json": sessions,
          "podtrail-agents.json": agents}


def render():
    return {name: json.dumps(make().json(), indent=2, sort_keys=True) + "\n"
            for name, make in BOARDS.items()}


if __name__ == "__main__":
    for name, text in render().items():
        (HERE / name).write_text(text)
        print(HERE / name)
