{{/*
Labels every object carries: the kustomize base's part-of (deploy/kustomization.yaml) plus
Helm's own. Selectors and pod templates use only app.kubernetes.io/name and component, as in
the base, so the two installs select the same pods.
*/}}
{{- define "podtrail.labels" -}}
app.kubernetes.io/part-of: podtrail
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "podtrail.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{/* The receiver's in-cluster names, which its serving certificate must carry. */}}
{{- define "podtrail.receiverDNSNames" -}}
- podtrail-receiver.{{ .Release.Namespace }}.svc
- podtrail-receiver-peers.{{ .Release.Namespace }}.svc
- "*.podtrail-receiver-peers.{{ .Release.Namespace }}.svc"
{{- end -}}

{{/* Secret holding ca.crt for the stream listener (the agents' CA). */}}
{{- define "podtrail.clientCaSecret" -}}
{{- if .Values.certManager.enabled -}}{{ .Values.receiver.agentTlsSecretName }}{{- else -}}{{ .Values.receiver.tls.clientCaSecretName }}{{- end -}}
{{- end -}}

{{/* Secret holding ca.crt for the webhook listeners (the API server's client CA). */}}
{{- define "podtrail.apiserverCaSecret" -}}
{{- if and .Values.certManager.enabled .Values.certManager.apiserverClient -}}podtrail-apiserver-client{{- else -}}{{ .Values.receiver.tls.apiserverClientCaSecretName }}{{- end -}}
{{- end -}}

{{/*
config.toml as the agents and receivers read it: what the values above derive, with
.Values.config merged over it. Rendered by podtrail.toml below.
*/}}
{{- define "podtrail.config" -}}
{{- $v := .Values -}}
{{- $redact := dict "key_file" "/etc/podtrail-redact/key" -}}
{{- with $v.redaction.patterns }}{{ $_ := set $redact "patterns" . }}{{ end -}}
{{- $spans := dict "redact" $redact -}}
{{- $scope := dict -}}
{{- with $v.scope.podCidrs }}{{ $_ := set $scope "pod_cidrs" . }}{{ end -}}
{{- with $v.scope.serviceCidrs }}{{ $_ := set $scope "service_cidrs" . }}{{ end -}}
{{- with $v.scope.nodeCidrs }}{{ $_ := set $scope "node_cidrs" . }}{{ end -}}
{{- if not $v.scope.learn }}{{ $_ := set $scope "learn" false }}{{ end -}}
{{- if $scope }}{{ $_ := set $spans "scope" $scope }}{{ end -}}
{{- $cfg := dict
    "attribution" (dict "receivers" (list (printf "https://podtrail-receiver-peers.%s.svc:%d" .Release.Namespace (int $v.receiver.ports.stream))))
    "metrics" (dict "listen" (printf "0.0.0.0:%d" (int $v.agent.metricsPort)))
    "spans" $spans -}}
{{- $rules := dict -}}
{{- if not $v.rules.enabled }}{{ $_ := set $rules "enabled" false }}{{ end -}}
{{- if not $v.rules.defaults }}{{ $_ := set $rules "defaults" false }}{{ end -}}
{{- with $v.rules.disable }}{{ $_ := set $rules "disable" . }}{{ end -}}
{{- if $v.rules.custom }}{{ $_ := set $rules "file" "/etc/podtrail-rules/rules.yaml" }}{{ end -}}
{{- if $rules }}{{ $_ := set $cfg "rules" $rules }}{{ end -}}
{{- $p := $v.receiver.ports -}}
{{- $recv := dict -}}
{{- if ne (int $p.audit) 8443 }}{{ $_ := set $recv "audit_listen" (printf "0.0.0.0:%d" (int $p.audit)) }}{{ end -}}
{{- if ne (int $p.admission) 9443 }}{{ $_ := set $recv "admission_listen" (printf "0.0.0.0:%d" (int $p.admission)) }}{{ end -}}
{{- if ne (int $p.stream) 7443 }}{{ $_ := set $recv "stream_listen" (printf "0.0.0.0:%d" (int $p.stream)) }}{{ end -}}
{{- if ne (int $p.metrics) 9464 }}{{ $_ := set $recv "metrics_listen" (printf "0.0.0.0:%d" (int $p.metrics)) }}{{ end -}}
{{- if $recv }}{{ $_ := set $cfg "receiver" $recv }}{{ end -}}
{{- $merged := mustMergeOverwrite $cfg (deepCopy $v.config) -}}
# podtrail configuration, rendered by the Helm chart from its values (deploy/helm/podtrail):
# keys as in podtrail.example.toml; podtrail's defaults apply to everything not here.

{{ include "podtrail.toml" (dict "table" $merged "prefix" "") | trim }}
{{- end -}}

{{/*
A TOML document from a map: scalars and lists of a table as key = JSON value (JSON strings,
numbers, booleans and arrays of them are valid TOML), then each sub-map as a [table].
*/}}
{{- define "podtrail.toml" -}}
{{- $prefix := .prefix -}}
{{- range $k, $val := .table }}
{{- if not (kindIs "map" $val) }}
{{ $k }} = {{ toJson $val }}
{{- end }}
{{- end }}
{{- range $k, $val := .table }}
{{- if kindIs "map" $val }}
{{- $name := ternary $k (printf "%s.%s" $prefix $k) (eq $prefix "") }}

[{{ $name }}]
{{- include "podtrail.toml" (dict "table" $val "prefix" $name) }}
{{- end }}
{{- end }}
{{- end -}}
